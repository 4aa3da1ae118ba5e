# quiet.jq summarises the per-second timeline of a cmdload --json result,
# split by how much CPU other processes took in that second
# (machine busy - server - load generator, in % of one core):
#
#   jq -r -f bench/quiet.jq bench/results/<date>/sat-c128.json
#
# On a shared machine this separates the product's numbers from its
# neighbours': "quiet" seconds are those where others took < $limit %.
def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
def r1: if . == null then "-" else (. * 10 | round) / 10 end;
(if $ARGS.named.limit then ($ARGS.named.limit | tonumber) else 25 end) as $limit
| [.timeline[] | select(.warmup | not) | select(.t_s > 0)
   | . + {others: (.machine_busy_pct - .server_cpu_pct - .load_generator_cpu_pct)}] as $s
| ($s[1:]) as $s   # the first measured second straddles the warmup boundary
| [$s[] | select(.others < $limit)] as $q
| [$s[] | select(.others >= $limit)] as $n
| "seconds: \($s | length) measured, \($q | length) quiet (others < \($limit)%), \($n | length) contended"
, "quiet:     median ok/s \([$q[].ok_per_s] | median | r1), max ok/s \([$q[].ok_per_s] | max | r1), median per-second p99 \([$q[].p99_ms] | median | r1) ms, worst per-second p99 \([$q[].p99_ms] | max | r1) ms, median server CPU \([$q[].server_cpu_pct] | median | r1)%"
, "contended: median ok/s \([$n[].ok_per_s] | median | r1), median per-second p99 \([$n[].p99_ms] | median | r1) ms, worst per-second p99 \([$n[].p99_ms] | max | r1) ms, median others \([$n[].others] | median | r1)%"
