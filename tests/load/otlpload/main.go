// Command otlpload drives an OTLP receiver with pre-encoded export requests.
//
// It exists because Python's grpc client costs about as much CPU per call as
// the server, so on a small benchmark machine a Python load generator would
// take the cores the receiver needs. The requests are never decoded here: a
// pass-through codec puts the file's bytes on the wire as they are, so this
// program needs no OTLP protos.
//
// The payload file holds repeated [4-byte big-endian length][request bytes]
// frames, sent round-robin. With -rate 0 the load is a closed loop of
// -concurrency requests; otherwise requests start on a fixed schedule and
// latency is measured from the scheduled start, so a slow receiver cannot hide
// its queueing (coordinated omission). Requests started during -warmup are sent
// but not counted. One JSON object goes to stdout: "sent" counts requests put
// on the wire, "failed" also counts those refused by the -max-inflight cap
// (errors.overload), latencies are of successful requests, and "seconds" runs
// from the end of the warm-up until the last counted request finished.
// "within" counts, per outcome ("ok" or the error key), the answers that came
// within -deadline of their start: what a load-shedding receiver promises.
//
// Unless GOMAXPROCS is set it runs Go code on one core at a time: on a 2-core
// machine that costs less CPU per request and leaves the receiver the rest.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec sends []byte requests as they are and copies responses into a
// *[]byte. Its name makes the content-type application/grpc+proto, which is
// what the bytes are; it is forced per connection, not registered, so it
// shadows nothing.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

// sendFunc sends one request and returns "" on success, else an error key.
type sendFunc func(ctx context.Context, body []byte) string

// stats collects the outcomes of requests started after the warm-up.
type stats struct {
	mu        sync.Mutex
	sent, ok  int
	failed    int
	latencies []time.Duration
	errors    map[string]int
	within    map[string]int
	deadline  time.Duration
	lastDone  time.Time
}

func (s *stats) record(key string, sent bool, latency time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sent {
		s.sent++
	}
	if sent && latency <= s.deadline {
		outcome := key
		if outcome == "" {
			outcome = "ok"
		}
		s.within[outcome]++
	}
	if key == "" {
		s.ok++
		s.latencies = append(s.latencies, latency)
	} else {
		s.failed++
		s.errors[key]++
	}
	if done := time.Now(); done.After(s.lastDone) {
		s.lastDone = done
	}
}

func main() {
	payloads := flag.String("payloads", "", "file of [4-byte big-endian length][request] frames (required)")
	mode := flag.String("mode", "grpc", "grpc or http")
	addr := flag.String("addr", "127.0.0.1:4317", "gRPC address")
	method := flag.String("method", "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", "gRPC method")
	url := flag.String("url", "http://127.0.0.1:4318/v1/metrics", "OTLP/HTTP endpoint")
	token := flag.String("token", "", "bearer token sent as the authorization header")
	connections := flag.Int("connections", 16, "gRPC only: connections, used round-robin")
	concurrency := flag.Int("concurrency", 128, "requests in flight in the closed loop (-rate 0); for HTTP also the connection pool in both modes (with -rate, requests past it wait for a connection, and that wait counts)")
	rate := flag.Float64("rate", 0, "requests per second on a fixed schedule; 0 = closed loop")
	maxInflight := flag.Int("max-inflight", 10000, "open loop: requests beyond this many in flight fail as overload")
	duration := flag.Duration("duration", 10*time.Second, "measured run time")
	warmup := flag.Duration("warmup", 0, "time before the measurement whose requests are not counted")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request timeout")
	deadline := flag.Duration("deadline", 2*time.Second, "answers within this long of their start are counted in \"within\"")
	flag.Parse()
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}

	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "otlpload: "+format+"\n", args...)
		os.Exit(2)
	}
	switch {
	case flag.NArg() > 0:
		fail("unexpected arguments %q", flag.Args())
	case *payloads == "":
		fail("-payloads is required")
	case *mode != "grpc" && *mode != "http":
		fail("-mode must be grpc or http, not %q", *mode)
	case *connections < 1 || *concurrency < 1 || *maxInflight < 1:
		fail("-connections, -concurrency and -max-inflight must be at least 1")
	case !(*rate >= 0) || math.IsInf(*rate, 1) || *duration <= 0 || *warmup < 0 || *timeout <= 0:
		fail("-rate and -warmup must be finite and not negative; -duration and -timeout must be positive")
	}
	bodies, err := readPayloads(*payloads)
	if err != nil {
		fail("%v", err)
	}

	var send sendFunc
	if *mode == "grpc" {
		send = grpcSender(*addr, *method, *token, *connections, *timeout)
	} else {
		send = httpSender(*url, *token, *concurrency, *timeout)
	}

	var next atomic.Uint64
	body := func() []byte { return bodies[(next.Add(1)-1)%uint64(len(bodies))] }
	s := &stats{errors: map[string]int{}, within: map[string]int{}, deadline: *deadline}
	start := time.Now()
	measured := start.Add(*warmup)
	end := measured.Add(*duration)
	var wg sync.WaitGroup
	if *rate == 0 {
		for range *concurrency {
			wg.Go(func() {
				for began := time.Now(); began.Before(end); began = time.Now() {
					key := send(context.Background(), body())
					if !began.Before(measured) {
						s.record(key, true, time.Since(began))
					}
				}
			})
		}
	} else {
		var inflight atomic.Int64
		for i := 0; ; i++ {
			due := start.Add(time.Duration(float64(i) * float64(time.Second) / *rate))
			if !due.Before(end) {
				break
			}
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
			counted := !due.Before(measured)
			if inflight.Load() >= int64(*maxInflight) {
				if counted {
					s.record("overload", false, 0)
				}
				continue
			}
			inflight.Add(1)
			wg.Go(func() {
				defer inflight.Add(-1)
				key := send(context.Background(), body())
				if counted {
					s.record(key, true, time.Since(due))
				}
			})
		}
	}
	wg.Wait()

	seconds := duration.Seconds()
	if s.lastDone.After(measured) {
		seconds = s.lastDone.Sub(measured).Seconds()
	}
	slices.Sort(s.latencies)
	ms := func(q float64) float64 { // exact, nearest-rank
		if len(s.latencies) == 0 {
			return 0
		}
		rank := int(math.Ceil(q*float64(len(s.latencies)))) - 1
		return float64(s.latencies[max(rank, 0)]) / float64(time.Millisecond)
	}
	json.NewEncoder(os.Stdout).Encode(struct {
		Sent    int            `json:"sent"`
		OK      int            `json:"ok"`
		Failed  int            `json:"failed"`
		Seconds float64        `json:"seconds"`
		Rate    float64        `json:"rate"`
		P50     float64        `json:"p50_ms"`
		P90     float64        `json:"p90_ms"`
		P99     float64        `json:"p99_ms"`
		Max     float64        `json:"max_ms"`
		Errors  map[string]int `json:"errors"`
		Within  map[string]int `json:"within"`
	}{s.sent, s.ok, s.failed, seconds, float64(s.ok) / seconds,
		ms(0.50), ms(0.90), ms(0.99), ms(1), s.errors, s.within})
}

func readPayloads(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var bodies [][]byte
	for len(data) > 0 {
		if len(data) < 4 {
			return nil, fmt.Errorf("%s: truncated length prefix after %d requests", path, len(bodies))
		}
		end := 4 + int(binary.BigEndian.Uint32(data))
		if end > len(data) {
			return nil, fmt.Errorf("%s: request %d claims %d bytes, %d left", path, len(bodies), end-4, len(data)-4)
		}
		bodies = append(bodies, data[4:end:end])
		data = data[end:]
	}
	if len(bodies) == 0 {
		return nil, fmt.Errorf("%s: no requests", path)
	}
	return bodies, nil
}

// grpcSender opens n connections (each its own TCP connection, so SO_REUSEPORT
// spreads them over the receiver's processes) and uses them round-robin.
func grpcSender(addr, method, token string, n int, timeout time.Duration) sendFunc {
	conns := make([]*grpc.ClientConn, n)
	for i := range conns {
		conn, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fmt.Fprintf(os.Stderr, "otlpload: %v\n", err)
			os.Exit(2)
		}
		conns[i] = conn
	}
	// Connect before the clock starts; a receiver that is down shows up as
	// failed requests rather than an error here.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, conn := range conns {
		conn.Connect()
	}
	for _, conn := range conns {
		state := conn.GetState()
		for state != connectivity.Ready && conn.WaitForStateChange(ctx, state) {
			state = conn.GetState()
		}
	}
	var md metadata.MD
	if token != "" {
		md = metadata.Pairs("authorization", "Bearer "+token)
	}
	var next atomic.Uint64
	return func(ctx context.Context, body []byte) string {
		ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), timeout)
		defer cancel()
		var reply []byte
		conn := conns[(next.Add(1)-1)%uint64(len(conns))]
		if err := conn.Invoke(ctx, method, body, &reply); err != nil {
			return status.Code(err).String()
		}
		return ""
	}
}

// httpSender POSTs protobuf bodies over a pool of keep-alive connections.
func httpSender(url, token string, conns int, timeout time.Duration) sendFunc {
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			// a fixed pool: past it requests queue here (their wait counts, from the time
			// they were due) instead of opening connections, whose churn swamps the server
			MaxConnsPerHost:     conns,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
	return func(ctx context.Context, body []byte) string {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return "http_request"
		}
		req.Header.Set("Content-Type", "application/x-protobuf")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				return "http_timeout"
			}
			return "http_transport"
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("http_%d", resp.StatusCode)
		}
		return ""
	}
}
