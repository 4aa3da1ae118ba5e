package wmkafka

import (
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kgoLogger forwards franz-go's client logs to a watermill logger, one level
// down (franz-go's Info is about group and connection lifecycle, which is
// Debug for a watermill application). Its debug logs are not produced at all.
type kgoLogger struct {
	logger watermill.LoggerAdapter
}

// kgoLogOpts routes franz-go's logs to logger, unless logger discards
// everything anyway (then franz-go does not even build the log lines).
func kgoLogOpts(logger watermill.LoggerAdapter) []kgo.Opt {
	if _, nop := logger.(watermill.NopLogger); nop {
		return nil
	}
	return []kgo.Opt{kgo.WithLogger(kgoLogger{logger: logger})}
}

func (l kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelInfo }

func (l kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	fields := make(watermill.LogFields, len(keyvals)/2+1)
	for i := 0; i+1 < len(keyvals); i += 2 {
		fields[fmt.Sprint(keyvals[i])] = keyvals[i+1]
	}
	switch level {
	case kgo.LogLevelError:
		var err error
		if e, ok := fields["err"].(error); ok {
			err = e
		}
		l.logger.Error("kgo: "+msg, err, fields)
	case kgo.LogLevelWarn:
		l.logger.Info("kgo: "+msg, fields)
	case kgo.LogLevelInfo:
		l.logger.Debug("kgo: "+msg, fields)
	default:
		l.logger.Trace("kgo: "+msg, fields)
	}
}
