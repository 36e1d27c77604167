// etcd_bench drives a running 3-member etcd cluster through the workloads a user would build a
// device registry on — device records as keys, prefix watches for notification, a lease-bound
// "create if absent" transaction for allocation — and reports the figures dtubroker's own benches
// are compared with (tests/bench/bench_output.hpp is the output contract; the workload shapes are
// those of /work/shared/notes/etcd-baseline.md).
//
// Every logical client (a writer, a watcher, a service) has its own persistent gRPC connection
// (one clientv3.Client). History is compacted and every member defragmented before each workload,
// untimed. Latencies come from this process's monotonic clock. The failover workload kill -9s the
// leader, so it runs last and leaves a 2-member cluster behind.
//
//	etcd_bench -endpoints A,B,C -pids PA,PB,PC -out FILE [-sync-dir DIR] [-duration 5s] [-samples 1000]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	"go.etcd.io/etcd/pkg/logutil"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"
)

const (
	kDialTimeout = 5 * time.Second
	// kOpTimeout bounds every single request outside the failover probe: a healthy cluster answers in
	// milliseconds, so hitting it means the cluster is broken and the run stops.
	kOpTimeout = 10 * time.Second
	// kWarmup requests precede each sequential latency series and are not counted.
	kWarmup = 50
	// kWriters and kWatchers: the throughput workload's shape (8 writers, one watcher per member).
	kWriters = 8
	// kDevicesPerWriter: each writer overwrites its own 1,000 device records in a cycle.
	kDevicesPerWriter = 1000
	// kClaimClients: concurrent services in the claim-cycle workloads and the race.
	kClaimClients = 8
	// kRaceRounds: rounds of 8 clients racing for one unit.
	kRaceRounds = 200
	// kLeaseTTL (seconds): a service's session lease; kept alive, so only its lifetime matters.
	kLeaseTTL = 10
	// kProbeInterval and kProbeTimeout: the failover prober's open loop (one put every 5 ms, each
	// given 3 s).
	kProbeInterval = 5 * time.Millisecond
	kProbeTimeout  = 3 * time.Second
	// kFailoverLimit: the longest the failover probe waits for a write to be accepted.
	kFailoverLimit = 20 * time.Second
	// kRecordSize: a device record is a JSON object of about this many bytes.
	kRecordSize = 200
)

// start is the origin of the timestamps written into records (monotonic clock, this process).
var start = time.Now()

// Metric is one line of the output contract (tests/bench/bench_output.hpp).
type Metric struct {
	Name     string   `json:"name"`
	Unit     string   `json:"unit"`
	Value    float64  `json:"value"`
	Baseline *float64 `json:"baseline"`
	Ratio    *float64 `json:"ratio"`
	Note     string   `json:"note,omitempty"`
}

// Bench holds the cluster's addresses and the figures gathered so far.
type Bench struct {
	endpoints []string
	pids      []int
	duration  time.Duration
	samples   int
	metrics   []Metric
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.64:2379,127.0.0.65:2379,127.0.0.66:2379",
		"the three members' client addresses, comma-separated")
	pids := flag.String("pids", "", "the members' process ids, in -endpoints order (for the failover workload)")
	out := flag.String("out", "", "file to write the JSON lines to (required)")
	duration := flag.Duration("duration", 5*time.Second, "length of each throughput workload")
	samples := flag.Int("samples", 1000, "timed requests in each sequential latency series")
	syncDir := flag.String("sync-dir", "", "directory on the members' disk, to time fdatasync there (optional)")
	flag.Parse()

	b := &Bench{endpoints: strings.Split(*endpoints, ","), duration: *duration, samples: *samples}
	switch {
	case *out == "":
		fail("-out FILE is required (usage: etcd_bench -endpoints A,B,C -pids PA,PB,PC -out FILE)")
	case len(b.endpoints) != 3:
		fail(fmt.Sprintf("-endpoints: need the 3 members' addresses, got %q", *endpoints))
	case b.samples < 1:
		fail(fmt.Sprintf("-samples: need at least 1, got %d", b.samples))
	case b.duration <= 0:
		fail(fmt.Sprintf("-duration: need a positive duration, got %s", b.duration))
	}
	if *pids != "" {
		for _, field := range strings.Split(*pids, ",") {
			pid, err := strconv.Atoi(field)
			if err != nil || pid <= 0 {
				fail(fmt.Sprintf("-pids: %q is not a process id", field))
			}
			b.pids = append(b.pids, pid)
		}
		if len(b.pids) != len(b.endpoints) {
			fail("-pids: need one process id per endpoint")
		}
	}
	// gRPC's own logging would interleave reconnect chatter (the failover kill) with the table.
	clientv3.SetLogger(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))

	fmt.Printf("etcd baseline: members %s; %d samples per latency series, %s per throughput workload\n",
		strings.Join(b.endpoints, " "), b.samples, b.duration)
	fmt.Printf("%-34s %12s %12s %9s  %s\n", "workload", "p50", "p99", "samples", "")
	if *syncDir != "" {
		b.diskSync(*syncDir)
	}
	b.propagation()
	b.rpcFloor()
	b.throughput()
	b.claimSequential()
	b.claimCycles(false)
	b.claimCycles(true)
	b.claimRace()
	if len(b.pids) > 0 {
		b.failover()
	} else {
		fmt.Println("failover: skipped (no -pids given)")
	}
	if err := b.write(*out); err != nil {
		fail(err.Error())
	}
	fmt.Printf("wrote %d figures to %s\n", len(b.metrics), *out)
}

// fail stops the run with a message a shell user understands; the caller (etcd_baseline.sh) then
// shows the members' logs.
func fail(message string) {
	fmt.Fprintln(os.Stderr, "etcd_bench: "+message)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail(what + ": " + err.Error())
	}
}

// connect opens one persistent client (one gRPC connection) to the given members.
func connect(endpoints ...string) *clientv3.Client {
	logConfig := logutil.DefaultZapLoggerConfig
	logConfig.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	config := clientv3.Config{Endpoints: endpoints, DialTimeout: kDialTimeout, LogConfig: &logConfig}
	c, err := clientv3.New(config)
	check(err, "cannot connect to "+strings.Join(endpoints, ","))
	return c
}

func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), kOpTimeout)
}

// leader returns the index in b.endpoints of the current leader, asking each member's Status.
func (b *Bench) leader() int {
	c := connect(b.endpoints...)
	defer c.Close()
	ids := make([]uint64, len(b.endpoints))
	var leaderID uint64
	for i, ep := range b.endpoints {
		ctx, cancel := opContext()
		status, err := c.Status(ctx, ep)
		cancel()
		check(err, "status of "+ep)
		ids[i], leaderID = status.Header.MemberId, status.Leader
	}
	for i, id := range ids {
		if id == leaderID {
			return i
		}
	}
	fail("no member is the leader")
	return -1
}

// followers returns the two non-leader endpoints: member A and member B of the workloads.
func (b *Bench) followers() (string, string) {
	leader := b.leader()
	var f []string
	for i, ep := range b.endpoints {
		if i != leader {
			f = append(f, ep)
		}
	}
	return f[0], f[1]
}

// prepare deletes the previous workload's keys, compacts the history to the current revision and
// defragments every member (untimed): without it throughput decays as history grows.
func (b *Bench) prepare() {
	c := connect(b.endpoints...)
	defer c.Close()
	for _, prefix := range []string{"/devices/", "/alloc/", "/probe/"} {
		ctx, cancel := opContext()
		_, err := c.Delete(ctx, prefix, clientv3.WithPrefix())
		cancel()
		check(err, "delete "+prefix)
	}
	ctx, cancel := opContext()
	resp, err := c.Get(ctx, "/")
	cancel()
	check(err, "get")
	ctx, cancel = opContext()
	_, err = c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
	cancel()
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		fail("compact: " + err.Error())
	}
	for _, ep := range b.endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := c.Defragment(ctx, ep)
		cancel()
		check(err, "defragment "+ep)
	}
}

// record is a device record of about kRecordSize bytes; it starts with the write time (µs since
// start, fixed width) so a watcher can read it back without decoding the JSON.
func record(dtu, dev int) string {
	head := fmt.Sprintf(`{"t":%015d,"dtu":"dtu-%05d","dev":%d,"vid":"04f9","pid":"0042",`+
		`"class":"printer","serial":"E7%08d","state":"present","pad":"`,
		time.Since(start).Microseconds(), dtu, dev, dtu*8+dev)
	pad := kRecordSize - len(head) - 2
	if pad < 0 {
		pad = 0
	}
	return head + strings.Repeat("x", pad) + `"}`
}

// writtenAt returns the write time a record carries (µs since start).
func writtenAt(value []byte) (int64, bool) {
	const at = len(`{"t":`)
	if len(value) < at+15 {
		return 0, false
	}
	t, err := strconv.ParseInt(string(value[at:at+15]), 10, 64)
	return t, err == nil
}

// watchFrom opens a prefix watch and returns once the member has confirmed it.
func watchFrom(ctx context.Context, c *clientv3.Client, prefix string) clientv3.WatchChan {
	ch := c.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	select {
	case resp := <-ch:
		if !resp.Created {
			fail("watch " + prefix + ": no creation notice")
		}
	case <-time.After(kOpTimeout):
		fail("watch " + prefix + ": not created within " + kOpTimeout.String())
	}
	return ch
}

// diskSync: 2 KiB appends each followed by fdatasync, in the members' directory. Not an etcd figure
// but what bounds its writes: every commit waits for a WAL fdatasync on a quorum of members.
func (b *Bench) diskSync(dir string) {
	const kSyncSamples, kSyncWarmup, kAppend = 200, 10, 2048
	file, err := os.CreateTemp(dir, "fdatasync-*.test")
	check(err, "cannot create a file in "+dir)
	defer os.Remove(file.Name())
	defer file.Close()
	chunk := []byte(strings.Repeat("x", kAppend))
	var latencies []float64
	for i := 0; i < kSyncWarmup+kSyncSamples; i++ {
		begin := time.Now()
		_, err := file.Write(chunk)
		check(err, "write "+file.Name())
		check(syscall.Fdatasync(int(file.Fd())), "fdatasync "+file.Name())
		if i >= kSyncWarmup {
			latencies = append(latencies, micros(time.Since(begin)))
		}
	}
	note := fmt.Sprintf("2 KiB append + fdatasync on the members' disk (beside their data directories), "+
		"%d sequential; bounds every etcd commit", kSyncSamples)
	b.latency("etcd.disk_fdatasync", "fdatasync of a 2 KiB append", latencies, note)
}

// propagation: a writer on follower A puts device records one after another; a prefix watcher on
// follower B; latency = event seen by the watcher − put start.
func (b *Bench) propagation() {
	b.prepare()
	a, bEndpoint := b.followers()
	writer, watcher := connect(a), connect(bEndpoint)
	defer writer.Close()
	defer watcher.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := watchFrom(ctx, watcher, "/devices/")

	var latencies []float64
	for i := 0; i < kWarmup+b.samples; i++ {
		key := fmt.Sprintf("/devices/dtu-%05d/%d", i%100, i%8)
		begin := time.Now()
		opCtx, opCancel := opContext()
		_, err := writer.Put(opCtx, key, record(i%100, i%8))
		opCancel()
		check(err, "put on "+a)
		if !awaitKey(events, key) {
			fail("watcher on " + bEndpoint + " did not see " + key + " within " + kOpTimeout.String())
		}
		if i >= kWarmup {
			latencies = append(latencies, micros(time.Since(begin)))
		}
	}
	note := fmt.Sprintf("put of a %d-byte device record on follower %s -> prefix watch event on follower %s; "+
		"%d sequential puts after %d warm-up", kRecordSize, a, bEndpoint, b.samples, kWarmup)
	b.latency("etcd.put_watch", "put -> watch (A -> B)", latencies, note)
}

// awaitKey reads watch events until one for key arrives (false after kOpTimeout).
func awaitKey(events clientv3.WatchChan, key string) bool {
	deadline := time.After(kOpTimeout)
	for {
		select {
		case resp, ok := <-events:
			if !ok || resp.Err() != nil {
				return false
			}
			for _, ev := range resp.Events {
				if string(ev.Kv.Key) == key {
					return true
				}
			}
		case <-deadline:
			return false
		}
	}
}

// rpcFloor: serializable GETs on a follower, answered from its own store without consensus — the
// least any etcd request costs.
func (b *Bench) rpcFloor() {
	b.prepare()
	a, _ := b.followers()
	c := connect(a)
	defer c.Close()
	var latencies []float64
	for i := 0; i < kWarmup+b.samples; i++ {
		begin := time.Now()
		ctx, cancel := opContext()
		_, err := c.Get(ctx, "/devices/dtu-00000/0", clientv3.WithSerializable())
		cancel()
		check(err, "serializable get on "+a)
		if i >= kWarmup {
			latencies = append(latencies, micros(time.Since(begin)))
		}
	}
	note := fmt.Sprintf("serializable GET on follower %s (no consensus), %d sequential", a, b.samples)
	p50, p99 := percentile(latencies, 50), percentile(latencies, 99)
	b.row("serializable GET (RPC floor)", fmt.Sprintf("%.0f us", p50), fmt.Sprintf("%.0f us", p99),
		len(latencies), "")
	b.add("etcd.rpc_floor.p50", "us", p50, note)
	b.add("etcd.rpc_floor.p99", "us", p99, note)
}

// throughput: 8 writers (spread over the members) each overwrite their own 1,000 device records in
// a cycle for b.duration; 3 prefix watchers, one per member, must each see every event. Also
// gives the watch delivery latency under that load.
func (b *Bench) throughput() {
	b.prepare()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type watcherState struct {
		mu        sync.Mutex
		seen      int
		latencies []float64
	}
	watchers := make([]*watcherState, len(b.endpoints))
	var watchDone sync.WaitGroup
	for i, ep := range b.endpoints {
		c := connect(ep)
		defer c.Close()
		events := watchFrom(ctx, c, "/devices/")
		w := &watcherState{}
		watchers[i] = w
		watchDone.Add(1)
		go func() {
			defer watchDone.Done()
			for resp := range events {
				now := time.Since(start).Microseconds()
				w.mu.Lock()
				for _, ev := range resp.Events {
					w.seen++
					if t, ok := writtenAt(ev.Kv.Value); ok {
						w.latencies = append(w.latencies, float64(now-t))
					}
				}
				w.mu.Unlock()
			}
		}()
	}

	writers := make([]*clientv3.Client, kWriters)
	for i := range writers {
		writers[i] = connect(b.endpoints[i%len(b.endpoints)])
		defer writers[i].Close()
	}
	puts := make([]int, kWriters)
	var wg sync.WaitGroup
	begin := time.Now()
	deadline := begin.Add(b.duration)
	for i := range writers {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); n++ {
				dev := n % kDevicesPerWriter
				key := fmt.Sprintf("/devices/w%d-%03d/%d", i, dev/8, dev%8)
				opCtx, opCancel := opContext()
				_, err := writers[i].Put(opCtx, key, record(i*1000+dev/8, dev%8))
				opCancel()
				check(err, "put from writer "+strconv.Itoa(i))
				puts[i]++
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(begin)
	total := 0
	for _, n := range puts {
		total += n
	}

	// Every watcher must have seen every put; give them a bounded time to drain.
	allSeen := true
	drainDeadline := time.Now().Add(kOpTimeout)
	for _, w := range watchers {
		for {
			w.mu.Lock()
			seen := w.seen
			w.mu.Unlock()
			if seen >= total {
				break
			}
			if time.Now().After(drainDeadline) {
				allSeen = false
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cancel()
	watchDone.Wait()
	var latencies []float64
	seenCounts := make([]string, len(watchers))
	missed := 0
	for i, w := range watchers {
		latencies = append(latencies, w.latencies...)
		seenCounts[i] = strconv.Itoa(w.seen)
		if w.seen < total {
			missed += total - w.seen
		}
	}
	rate := float64(total) / elapsed.Seconds()
	verdict := "every watcher saw every event"
	if !allSeen {
		verdict = "NOT every watcher saw every event (seen " + strings.Join(seenCounts, "/") + ")"
	}
	b.row("device-record puts, 8 writers", fmt.Sprintf("%.0f ops/s", rate), "", total, verdict)
	b.add("etcd.put.throughput", "ops/s", rate, fmt.Sprintf("8 writers spread over 3 members for %s, "+
		"%d-byte records, 1,000 per writer overwritten in a cycle; 3 prefix watchers (one per member); %s",
		b.duration, kRecordSize, verdict))
	b.add("etcd.put.watchers_missed", "count", float64(missed),
		"events the 3 watchers had not seen 10 s after the writers stopped (0 = every watcher saw every put)")
	b.latency("etcd.watch_under_load", "watch delivery under that load", latencies,
		"put start -> event at each of the 3 prefix watchers while 8 writers put at full speed")
}

// claim issues txn(if create_revision(key) == 0 then put(key, holder, lease) else get(key)) and
// reports whether the unit was taken.
func claim(c *clientv3.Client, key, holder string, lease clientv3.LeaseID) bool {
	ctx, cancel := opContext()
	defer cancel()
	resp, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, holder, clientv3.WithLease(lease))).
		Else(clientv3.OpGet(key)).
		Commit()
	check(err, "claim txn on "+key)
	return resp.Succeeded
}

func grant(c *clientv3.Client) clientv3.LeaseID {
	ctx, cancel := opContext()
	defer cancel()
	resp, err := c.Grant(ctx, kLeaseTTL)
	check(err, "lease grant")
	return resp.ID
}

func revoke(c *clientv3.Client, lease clientv3.LeaseID) {
	ctx, cancel := opContext()
	defer cancel()
	_, err := c.Revoke(ctx, lease)
	check(err, "lease revoke")
}

func release(c *clientv3.Client, key string) {
	ctx, cancel := opContext()
	defer cancel()
	_, err := c.Delete(ctx, key)
	check(err, "delete "+key)
}

// keepAlive keeps a session lease alive until ctx ends, draining the responses as clientv3 asks.
// Callers revoke their session leases when done, so no expiry lands in a later workload.
func keepAlive(ctx context.Context, c *clientv3.Client, lease clientv3.LeaseID) {
	responses, err := c.KeepAlive(ctx, lease)
	check(err, "lease keep-alive")
	go func() {
		for range responses {
		}
	}()
}

// claimSequential: one service on follower B claims units one after another:
//   - claim: lease grant + claim txn with that lease (release by revoke, untimed) — etcd.claim;
//   - held: claim txn with a session lease already held (release by delete, untimed);
//   - cycle: grant + txn + keep-alive + revoke, all timed.
func (b *Bench) claimSequential() {
	b.prepare()
	_, ep := b.followers()
	c := connect(ep)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var fresh, held, cycle []float64
	for i := 0; i < kWarmup+b.samples; i++ {
		key := fmt.Sprintf("/alloc/unit-%d", i)
		begin := time.Now()
		lease := grant(c)
		if !claim(c, key, "svc-seq", lease) {
			fail(key + " was already taken")
		}
		elapsed := time.Since(begin)
		revoke(c, lease)
		if i >= kWarmup {
			fresh = append(fresh, micros(elapsed))
		}
	}
	session := grant(c)
	keepAlive(ctx, c, session)
	defer revoke(c, session)
	for i := 0; i < kWarmup+b.samples; i++ {
		key := fmt.Sprintf("/alloc/unit-%d", i)
		begin := time.Now()
		if !claim(c, key, "svc-seq", session) {
			fail(key + " was already taken")
		}
		elapsed := time.Since(begin)
		release(c, key)
		if i >= kWarmup {
			held = append(held, micros(elapsed))
		}
	}
	for i := 0; i < kWarmup+b.samples; i++ {
		key := fmt.Sprintf("/alloc/unit-%d", i)
		begin := time.Now()
		lease := grant(c)
		if !claim(c, key, "svc-seq", lease) {
			fail(key + " was already taken")
		}
		kaCtx, kaCancel := opContext()
		_, err := c.KeepAliveOnce(kaCtx, lease)
		kaCancel()
		check(err, "lease keep-alive")
		revoke(c, lease)
		if i >= kWarmup {
			cycle = append(cycle, micros(time.Since(begin)))
		}
	}
	where := fmt.Sprintf("one client on follower %s, %d sequential after %d warm-up", ep, b.samples, kWarmup)
	b.latency("etcd.claim", "lease grant + claim txn", fresh,
		"lease grant + txn(create /alloc/<unit> if absent, with that lease); "+where)
	b.latency("etcd.claim_held", "claim txn, lease already held", held,
		"txn(create /alloc/<unit> if absent) with a kept-alive session lease; "+where)
	b.latency("etcd.claim_full_cycle", "grant + txn + keep-alive + revoke", cycle,
		"lease grant + claim txn + one keep-alive + revoke, all timed; "+where)
}

// claimCycles: 8 services (spread over the members) claim and release their own units as fast as
// they can for b.duration. With freshLease false each holds one kept-alive session lease and a
// cycle is claim txn + delete; with freshLease true a cycle is grant + claim txn + revoke.
func (b *Bench) claimCycles(freshLease bool) {
	b.prepare()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := make([]*clientv3.Client, kClaimClients)
	sessions := make([]clientv3.LeaseID, kClaimClients)
	for i := range clients {
		clients[i] = connect(b.endpoints[i%len(b.endpoints)])
		defer clients[i].Close()
		if !freshLease {
			sessions[i] = grant(clients[i])
			keepAlive(ctx, clients[i], sessions[i])
			defer revoke(clients[i], sessions[i])
		}
	}
	cycles := make([]int, kClaimClients)
	var wg sync.WaitGroup
	begin := time.Now()
	deadline := begin.Add(b.duration)
	for i := range clients {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, holder := clients[i], fmt.Sprintf("svc-%d", i)
			for n := 0; time.Now().Before(deadline); n++ {
				key := fmt.Sprintf("/alloc/svc%d-unit-%d", i, n%100)
				if freshLease {
					lease := grant(c)
					if !claim(c, key, holder, lease) {
						fail(key + " was already taken")
					}
					revoke(c, lease)
				} else {
					if !claim(c, key, holder, sessions[i]) {
						fail(key + " was already taken")
					}
					release(c, key)
				}
				cycles[i]++
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(begin)
	total := 0
	for _, n := range cycles {
		total += n
	}
	rate := float64(total) / elapsed.Seconds()
	if freshLease {
		b.row("claim cycles, fresh lease each", fmt.Sprintf("%.0f /s", rate), "", total, "8 clients")
		b.add("etcd.claim_fresh_lease.throughput", "ops/s", rate, fmt.Sprintf(
			"cycles/s: 8 clients spread over 3 members, each cycle lease grant + claim txn + revoke, for %s",
			b.duration))
	} else {
		b.row("claim cycles, session lease", fmt.Sprintf("%.0f /s", rate), "", total, "8 clients")
		b.add("etcd.claim_cycle.throughput", "ops/s", rate, fmt.Sprintf(
			"claim+release cycles/s: 8 clients spread over 3 members, each with one kept-alive session lease; "+
				"cycle = txn(create if absent, with the lease) + delete, for %s", b.duration))
	}
}

// claimRace: 8 services, each with a session lease, race for the same unit in each of 200 rounds;
// exactly one must win every round.
func (b *Bench) claimRace() {
	b.prepare()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := make([]*clientv3.Client, kClaimClients)
	sessions := make([]clientv3.LeaseID, kClaimClients)
	for i := range clients {
		clients[i] = connect(b.endpoints[i%len(b.endpoints)])
		defer clients[i].Close()
		sessions[i] = grant(clients[i])
		keepAlive(ctx, clients[i], sessions[i])
		defer revoke(clients[i], sessions[i])
	}
	badRounds := 0
	for round := 0; round < kRaceRounds; round++ {
		key := fmt.Sprintf("/alloc/race-%d", round)
		startSignal := make(chan struct{})
		winners := make([]bool, kClaimClients)
		var wg sync.WaitGroup
		for i := range clients {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-startSignal
				winners[i] = claim(clients[i], key, fmt.Sprintf("svc-%d", i), sessions[i])
			}(i)
		}
		close(startSignal)
		wg.Wait()
		won := 0
		for _, w := range winners {
			if w {
				won++
			}
		}
		if won != 1 {
			badRounds++
		}
	}
	b.row("8 clients race for one unit", fmt.Sprintf("%d bad", badRounds), "", kRaceRounds,
		"rounds with other than one winner")
	b.add("etcd.claim_race.bad_rounds", "count", float64(badRounds), fmt.Sprintf(
		"rounds (of %d) in which other than exactly one of 8 racing clients won the claim txn", kRaceRounds))
}

// failover: a prober on the two survivors issues a put every 5 ms (open loop, 3 s timeout each);
// the leader is killed with SIGKILL; the figure is the time from the kill to the first put accepted
// that was issued after it.
func (b *Bench) failover() {
	b.prepare()
	leader := b.leader()
	var probers []*clientv3.Client
	for i, ep := range b.endpoints {
		if i != leader {
			c := connect(ep)
			defer c.Close()
			probers = append(probers, c)
		}
	}

	var mu sync.Mutex
	var killedAt time.Time // zero until the kill
	var firstAccepted time.Duration
	accepted := make(chan struct{})
	var inflight sync.WaitGroup
	probe := func(c *clientv3.Client, n int) {
		defer inflight.Done()
		issued := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), kProbeTimeout)
		_, err := c.Put(ctx, fmt.Sprintf("/probe/%d", n%100), "probe")
		cancel()
		done := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if err == nil && !killedAt.IsZero() && issued.After(killedAt) && firstAccepted == 0 {
			firstAccepted = done.Sub(killedAt)
			close(accepted)
		}
	}

	ticker := time.NewTicker(kProbeInterval)
	defer ticker.Stop()
	begin := time.Now()
	limit := time.After(kFailoverLimit)
	killed := false
	for n := 0; ; n++ {
		select {
		case <-ticker.C:
		case <-accepted:
			inflight.Wait()
			b.reportFailover(leader, firstAccepted)
			return
		case <-limit:
			inflight.Wait()
			fail(fmt.Sprintf("failover: no put accepted by the survivors within %s of killing the leader",
				kFailoverLimit))
		}
		// The prober runs 200 ms against the healthy cluster before the kill.
		if !killed && time.Since(begin) > 200*time.Millisecond {
			mu.Lock()
			pid := b.pids[leader]
			check(syscall.Kill(pid, syscall.SIGKILL), "kill -9 the leader (pid "+strconv.Itoa(pid)+")")
			killedAt = time.Now()
			mu.Unlock()
			killed = true
		}
		inflight.Add(1)
		go probe(probers[n%len(probers)], n)
	}
}

// reportFailover records etcd.failover: kill -> first accepted put, in ms.
func (b *Bench) reportFailover(leader int, firstAccepted time.Duration) {
	ms := float64(firstAccepted.Microseconds()) / 1000
	b.row("kill -9 leader -> first write", fmt.Sprintf("%.0f ms", ms), "", 1, "default election timers")
	b.add("etcd.failover", "ms", ms, fmt.Sprintf("kill -9 of the leader %s -> first put accepted by the "+
		"survivors (a put every 5 ms on them, 3 s timeout each); default heartbeat 100 ms, election 1,000 ms; "+
		"one kill", b.endpoints[leader]))
}

// latency records <name>.p50 and <name>.p99 (µs) and prints them.
func (b *Bench) latency(name, label string, samples []float64, note string) {
	p50, p99 := percentile(samples, 50), percentile(samples, 99)
	b.row(label, fmt.Sprintf("%.0f us", p50), fmt.Sprintf("%.0f us", p99), len(samples), "")
	b.add(name+".p50", "us", p50, note)
	b.add(name+".p99", "us", p99, note)
}

// row prints one line of the table.
func (b *Bench) row(label, p50, p99 string, samples int, comment string) {
	fmt.Printf("%-34s %12s %12s %9d  %s\n", label, p50, p99, samples, comment)
}

// add records one figure for the JSON output.
func (b *Bench) add(name, unit string, value float64, note string) {
	b.metrics = append(b.metrics, Metric{Name: name, Unit: unit, Value: value, Note: note})
}

// write replaces file with one JSON object per metric, one per line.
func (b *Bench) write(file string) error {
	var text strings.Builder
	for _, m := range b.metrics {
		line, err := json.Marshal(m)
		if err != nil {
			return err
		}
		text.Write(line)
		text.WriteByte('\n')
	}
	if err := os.WriteFile(file, []byte(text.String()), 0o644); err != nil {
		return fmt.Errorf("cannot write %s: %w", file, err)
	}
	return nil
}

// percentile is the p-th percentile (0–100) by nearest rank, as bench_output.hpp computes it.
func percentile(samples []float64, p float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	sorted := append([]float64(nil), samples...)
	sort.Float64s(sorted)
	rank := int(p/100*float64(len(sorted)) + 0.5)
	if rank > 0 {
		rank--
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return sorted[rank]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
