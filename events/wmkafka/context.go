package wmkafka

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type recordInfoKey struct{}

// recordInfo is what a consumed message's Context says about its record.
type recordInfo struct {
	topic     string
	partition int32
	offset    int64
	timestamp time.Time
	key       []byte
}

func withRecordInfo(ctx context.Context, rec *kgo.Record) context.Context {
	return context.WithValue(ctx, recordInfoKey{}, recordInfo{
		topic:     rec.Topic,
		partition: rec.Partition,
		offset:    rec.Offset,
		timestamp: rec.Timestamp,
		key:       rec.Key,
	})
}

func recordInfoFromCtx(ctx context.Context) (recordInfo, bool) {
	info, ok := ctx.Value(recordInfoKey{}).(recordInfo)
	return info, ok
}

// MessagePartitionFromCtx returns the Kafka partition of a consumed message.
func MessagePartitionFromCtx(ctx context.Context) (int32, bool) {
	info, ok := recordInfoFromCtx(ctx)
	return info.partition, ok
}

// MessagePartitionOffsetFromCtx returns the Kafka offset of a consumed message
// within its partition.
func MessagePartitionOffsetFromCtx(ctx context.Context) (int64, bool) {
	info, ok := recordInfoFromCtx(ctx)
	return info.offset, ok
}

// MessageTimestampFromCtx returns the Kafka record timestamp of a consumed
// message.
func MessageTimestampFromCtx(ctx context.Context) (time.Time, bool) {
	info, ok := recordInfoFromCtx(ctx)
	return info.timestamp, ok
}

// MessageKeyFromCtx returns the Kafka record key of a consumed message (nil for
// an unkeyed record). The returned slice must not be modified.
func MessageKeyFromCtx(ctx context.Context) ([]byte, bool) {
	info, ok := recordInfoFromCtx(ctx)
	return info.key, ok
}

// MessageTopicFromCtx returns the Kafka topic of a consumed message.
func MessageTopicFromCtx(ctx context.Context) (string, bool) {
	info, ok := recordInfoFromCtx(ctx)
	return info.topic, ok
}
