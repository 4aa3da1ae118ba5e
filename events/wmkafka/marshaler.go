package wmkafka

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
)

// UUIDHeaderKey is the record header that carries the watermill message UUID.
// It is the same key watermill's Sarama-based Kafka Pub/Sub uses, so records
// stay readable by either implementation.
const UUIDHeaderKey = "_watermill_message_uuid"

// Marshaler turns a watermill message into a Kafka record. The Publisher sets
// the record's Topic and, when PublisherConfig.Key is set, its Key.
type Marshaler interface {
	Marshal(topic string, msg *message.Message) (*kgo.Record, error)
}

// Unmarshaler turns a consumed Kafka record into a watermill message. It is
// called again for every redelivery of the same record, so it must not keep or
// mutate the record. A record it cannot unmarshal blocks its partition (the
// error is logged and retried): a poison record is never skipped silently.
type Unmarshaler interface {
	Unmarshal(rec *kgo.Record) (*message.Message, error)
}

// MarshalerUnmarshaler is both halves of the mapping.
type MarshalerUnmarshaler interface {
	Marshaler
	Unmarshaler
}

// DefaultMarshaler maps the message UUID to the UUIDHeaderKey header, each
// metadata entry to a header of the same name (sorted by name) and the
// payload to the record value.
type DefaultMarshaler struct{}

var _ MarshalerUnmarshaler = DefaultMarshaler{}

// Marshal implements Marshaler.
func (DefaultMarshaler) Marshal(topic string, msg *message.Message) (*kgo.Record, error) {
	if msg == nil {
		return nil, fmt.Errorf("wmkafka: marshal: nil message")
	}
	keys := make([]string, 0, len(msg.Metadata))
	for k := range msg.Metadata {
		if k == UUIDHeaderKey {
			continue // the UUID header is ours; a metadata entry must not shadow it
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)

	headers := make([]kgo.RecordHeader, 0, len(keys)+1)
	headers = append(headers, kgo.RecordHeader{Key: UUIDHeaderKey, Value: []byte(msg.UUID)})
	for _, k := range keys {
		headers = append(headers, kgo.RecordHeader{Key: k, Value: []byte(msg.Metadata[k])})
	}
	return &kgo.Record{
		Topic:   topic,
		Value:   msg.Payload,
		Headers: headers,
	}, nil
}

// Unmarshal implements Unmarshaler. The payload is copied, so a handler that
// modifies it cannot change what a redelivery sees.
func (DefaultMarshaler) Unmarshal(rec *kgo.Record) (*message.Message, error) {
	if rec == nil {
		return nil, fmt.Errorf("wmkafka: unmarshal: nil record")
	}
	var uuid string
	metadata := make(message.Metadata, len(rec.Headers))
	for _, h := range rec.Headers {
		if h.Key == UUIDHeaderKey {
			uuid = string(h.Value)
			continue
		}
		metadata.Set(h.Key, string(h.Value))
	}
	msg := message.NewMessage(uuid, bytes.Clone(rec.Value))
	msg.Metadata = metadata
	return msg, nil
}

// KeyFromMetadata returns a PublisherConfig.Key function that uses the given
// metadata entry as the partition key (for example "partition_key" or the
// tenant). A message without that entry is published without a key.
func KeyFromMetadata(name string) func(topic string, msg *message.Message) []byte {
	return func(_ string, msg *message.Message) []byte {
		v := msg.Metadata.Get(name)
		if v == "" {
			return nil
		}
		return []byte(v)
	}
}
