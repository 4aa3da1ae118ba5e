package wmkafka_test

import (
	"os"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events/wmkafka"
)

// startBroker starts an in-process kfake broker that clients reach over TCP
// on loopback, and stops it when the test ends.
func startBroker(t testing.TB, partitions int) []string {
	t.Helper()
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(partitions),
	)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func testLogger() watermill.LoggerAdapter {
	if os.Getenv("WMKAFKA_DEBUG") != "" {
		return watermill.NewStdLogger(true, false)
	}
	return watermill.NopLogger{}
}

// fastGroupOpts make group membership changes quick on a test broker:
// members notice a rebalance within one heartbeat, and a resumed partition is
// fetched without waiting for an idle fetch to time out.
func fastGroupOpts() []kgo.Opt {
	return []kgo.Opt{
		kgo.HeartbeatInterval(100 * time.Millisecond),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}
}

func newTestPublisher(t testing.TB, brokers []string, cfg wmkafka.PublisherConfig) *wmkafka.Publisher {
	t.Helper()
	cfg.Brokers = brokers
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	pub, err := wmkafka.NewPublisher(cfg)
	if err != nil {
		t.Fatalf("new publisher: %v", err)
	}
	return pub
}

func newTestSubscriber(t testing.TB, brokers []string, cfg wmkafka.SubscriberConfig) *wmkafka.Subscriber {
	t.Helper()
	cfg.Brokers = brokers
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	if cfg.NackResendSleep == 0 {
		cfg.NackResendSleep = 10 * time.Millisecond
	}
	if cfg.CommitInterval == 0 {
		cfg.CommitInterval = 100 * time.Millisecond
	}
	cfg.ClientOpts = append(fastGroupOpts(), cfg.ClientOpts...)
	sub, err := wmkafka.NewSubscriber(cfg)
	if err != nil {
		t.Fatalf("new subscriber: %v", err)
	}
	return sub
}
