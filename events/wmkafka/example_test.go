package wmkafka_test

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/companyos/companyos/events/wmkafka"
)

// A projector is a watermill Router handler over the Subscriber: the offset of
// a message is committed only after the handler returned nil (the Router acks
// it), so a crash in between replays the message instead of losing it.
func Example_router() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		panic(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	pub, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{
		Brokers: brokers,
		Key:     wmkafka.KeyFromMetadata("tenant"), // one tenant, one partition, one order
	})
	if err != nil {
		panic(err)
	}
	defer pub.Close()

	sub, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
		Brokers:          brokers,
		ConsumerGroup:    "example-projector",
		InitializeTopics: true,
		Partitions:       3,
	})
	if err != nil {
		panic(err)
	}
	defer sub.Close()
	if err := sub.SubscribeInitialize("example.events.v1"); err != nil {
		panic(err)
	}

	for i, name := range []string{"created", "renamed", "archived"} {
		msg := message.NewMessage(watermill.NewUUID(), []byte(name))
		msg.Metadata.Set("tenant", "acme")
		msg.Metadata.Set("seq", fmt.Sprint(i+1))
		if err := pub.Publish("example.events.v1", msg); err != nil {
			panic(err)
		}
	}

	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	seen := 0
	router.AddConsumerHandler("example-projector", "example.events.v1", sub, func(msg *message.Message) error {
		offset, _ := wmkafka.MessagePartitionOffsetFromCtx(msg.Context())
		fmt.Printf("tenant %s seq %s: %s (offset %d)\n", msg.Metadata.Get("tenant"), msg.Metadata.Get("seq"), msg.Payload, offset)
		if seen++; seen == 3 {
			stop()
		}
		return nil
	})
	if err := router.Run(ctx); err != nil {
		panic(err)
	}
	// Output:
	// tenant acme seq 1: created (offset 0)
	// tenant acme seq 2: renamed (offset 1)
	// tenant acme seq 3: archived (offset 2)
}
