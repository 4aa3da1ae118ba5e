package events

import (
	"fmt"
	"net"
	"path/filepath"

	"github.com/twmb/franz-go/pkg/kfake"
)

// BrokerConfig configures the embedded Kafka broker used by `companyos dev`.
type BrokerConfig struct {
	// Addr is the listener, host:port (required). kcat and any Kafka client
	// can connect to it.
	Addr string
	// DataDir is the base data directory (required); the broker persists
	// under DataDir/kafka so topics, offsets and transactions survive restarts.
	DataDir string
	// Partitions is the default partition count for auto-created topics
	// (optional, default 6).
	Partitions int
	// ClusterID is reported to clients (optional, default "companyos-dev").
	ClusterID string
}

// Broker is an embedded, persistent Kafka-protocol broker (franz-go kfake).
type Broker struct {
	cluster *kfake.Cluster
}

// StartBroker starts the embedded broker on cfg.Addr.
func StartBroker(cfg BrokerConfig) (*Broker, error) {
	if cfg.Addr == "" || cfg.DataDir == "" {
		return nil, fmt.Errorf("events: broker: addr and data dir are required")
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = 6
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = "companyos-dev"
	}
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("events: broker addr %q: %w", cfg.Addr, err)
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil {
		return nil, fmt.Errorf("events: broker addr %q: bad port", cfg.Addr)
	}
	listen := func(network, _ string) (net.Listener, error) {
		return net.Listen(network, net.JoinHostPort(host, port))
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(p),
		kfake.ListenFn(listen),
		kfake.DataDir(filepath.Join(cfg.DataDir, "kafka")),
		kfake.ClusterID(cfg.ClusterID),
		kfake.DefaultNumPartitions(cfg.Partitions),
		kfake.AllowAutoTopicCreation(),
	)
	if err != nil {
		return nil, fmt.Errorf("events: start embedded broker on %s: %w", cfg.Addr, err)
	}
	return &Broker{cluster: c}, nil
}

// Addrs are the broker's listen addresses (seed brokers for clients).
func (b *Broker) Addrs() []string { return b.cluster.ListenAddrs() }

// Close stops the broker and flushes its data directory.
func (b *Broker) Close() { b.cluster.Close() }
