package ledger

import (
	"fmt"
	"testing"
)

func TestPrintDiffSQL(t *testing.T) {
	cols := []diffColumn{}
	for _, c := range []string{"tenant", "seq", "action", "actor", "decision", "policy_version", "evidence_hash", "created_at", "redactions", "prev_hash", "payload_hash", "envelope", "kafka_partition", "kafka_offset", "command_id", "subject"} {
		cols = append(cols, diffColumn{name: c, bytea: c == "envelope"})
	}
	fmt.Println(diffSQL(cols, `"public"."receipts"`, `"s"."receipts"`, `"public"."ledger_positions"`))
}
