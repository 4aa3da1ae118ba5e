package events

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Topic names. Commands, events and replies share a partition count and are
// keyed by tenant, so partition p of each holds the same tenants: the
// processor that owns commands partition p is the single writer of events
// partition p.
const (
	TopicCommands = "companyos.commands.v1"
	TopicEvents   = "companyos.events.v1"
	TopicReplies  = "companyos.replies.v1"
	TopicDLQ      = "companyos.dlq.v1"
	// TopicMetering carries usage as CloudEvents (metering/), keyed by
	// tenant; it is not co-partitioned with the others.
	TopicMetering = "metering.events.v1"
	// TopicPolicyUpdates carries published policy bundles; every processor
	// follows it and hot-reloads (one partition: a total order of bundles).
	TopicPolicyUpdates = "policy.bundle.updates"
)

// TopicsConfig says how to create the topics.
type TopicsConfig struct {
	Partitions        int32 // optional, default 6
	ReplicationFactor int16 // optional, default 1 (the embedded broker); use 3 on a real cluster
}

// EnsureTopics creates the CompanyOS topics when absent and checks that the
// co-partitioned ones agree. Events are never compacted nor expired; replies
// only need to live for the request timeout.
func EnsureTopics(ctx context.Context, cl *kgo.Client, cfg TopicsConfig) error {
	if cfg.Partitions <= 0 {
		cfg.Partitions = 6
	}
	if cfg.ReplicationFactor <= 0 {
		cfg.ReplicationFactor = 1
	}
	adm := kadm.NewClient(cl)
	forever := "-1"
	hour := "3600000"
	deletePolicy := "delete"
	specs := []struct {
		name    string
		configs map[string]*string
	}{
		{TopicCommands, map[string]*string{"retention.ms": &forever, "cleanup.policy": &deletePolicy}},
		{TopicEvents, map[string]*string{"retention.ms": &forever, "cleanup.policy": &deletePolicy}},
		{TopicReplies, map[string]*string{"retention.ms": &hour}},
		{TopicDLQ, map[string]*string{"retention.ms": &forever}},
		{TopicMetering, map[string]*string{"retention.ms": &forever, "cleanup.policy": &deletePolicy}},
		{TopicPolicyUpdates, map[string]*string{"retention.ms": &forever, "cleanup.policy": &deletePolicy}},
	}
	for _, s := range specs {
		parts := cfg.Partitions
		if s.name == TopicPolicyUpdates {
			parts = 1
		}
		resp, err := adm.CreateTopic(ctx, parts, cfg.ReplicationFactor, s.configs, s.name)
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("events: create topic %s: %w", s.name, err)
		}
		if resp.Err != nil && !errors.Is(resp.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("events: create topic %s: %w", s.name, resp.Err)
		}
	}
	td, err := adm.ListTopics(ctx, TopicCommands, TopicEvents, TopicReplies)
	if err != nil {
		return fmt.Errorf("events: list topics: %w", err)
	}
	n := -1
	for _, name := range []string{TopicCommands, TopicEvents, TopicReplies} {
		d, ok := td[name]
		if !ok || d.Err != nil {
			return fmt.Errorf("events: topic %s missing after create: %v", name, d.Err)
		}
		if n == -1 {
			n = len(d.Partitions)
		} else if len(d.Partitions) != n {
			return fmt.Errorf("events: topics %s and %s must have the same partition count (%d vs %d)", TopicCommands, name, n, len(d.Partitions))
		}
	}
	return nil
}

// PartitionCount returns the number of partitions of topic.
func PartitionCount(ctx context.Context, cl *kgo.Client, topic string) (int32, error) {
	td, err := kadm.NewClient(cl).ListTopics(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("events: describe %s: %w", topic, err)
	}
	d, ok := td[topic]
	if !ok || d.Err != nil {
		return 0, fmt.Errorf("events: describe %s: %v", topic, d.Err)
	}
	return int32(len(d.Partitions)), nil
}
