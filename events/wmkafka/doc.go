// Package wmkafka is the project-owned watermill Publisher and Subscriber on
// franz-go (DESIGN.md decision 10): projectors run as watermill Router
// handlers over it.
//
// It owns the mapping between watermill messages and Kafka records, the
// consumer-group lifecycle of each subscription, and offset commits. Delivery
// is at-least-once with per-partition ordering: a partition hands out one
// message at a time, waits for its Ack before the next one, and commits only
// offsets of acknowledged messages (periodically, on revoke and on close). A
// Nack redelivers the same record after SubscriberConfig.NackResendSleep.
//
// It must not know about CompanyOS topics, envelopes or receipts (package
// events owns those), and it never auto-commits what was merely polled.
package wmkafka
