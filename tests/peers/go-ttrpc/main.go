// Command go-ttrpc-peer puts containerd's Go ttrpc on the other end of pykata's ttRPC:
// a grpc.Health server, a one-shot client, a raw caller and a closed-loop load generator.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/status"
)

const peerName = "go-ttrpc-peer"

// ttrpcVersion is the library's version, set at build time with -ldflags -X.
var ttrpcVersion = "unknown"

const usage = `usage: go-ttrpc-peer COMMAND [flags]

  serve --addr unix://PATH [--hvsock]
        serve grpc.Health (Check, Version) until SIGTERM; --hvsock expects each
        connection to open with "CONNECT <port>\n" and answers "OK <port>\n"
  call  --addr ADDR [--method Check|Version] [--timeout 10s]
        one grpc.Health call; prints the response as JSON
  raw   --addr ADDR --service S --method M [--payload-hex HEX] [--timeout 10s]
        one call of anything; prints {code, message, payload_hex, status_present}
  bench --addr ADDR [--concurrency 1] [--duration 5s] [--timeout 10s]
        closed-loop Check calls over one connection; prints one JSON line

Client commands print one JSON line on stdout. Exit status: 0 success, 1 the server
answered with an error status (bench: some call failed), 2 usage or transport error.`

func main() {
	commands := map[string]func([]string) int{
		"serve": serve,
		"call":  call,
		"raw":   raw,
		"bench": bench,
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	os.Exit(run(os.Args[2:]))
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.Usage = func() { fmt.Fprintln(os.Stderr, usage) }
	return fs
}

// socketPath accepts unix://PATH or a bare path.
func socketPath(addr string) (string, error) {
	path := strings.TrimPrefix(addr, "unix://")
	if path == "" || strings.Contains(path, "://") {
		return "", fmt.Errorf("unsupported address %q (want unix://PATH)", addr)
	}
	return path, nil
}

func dial(addr string, timeout time.Duration, opts ...ttrpc.ClientOpts) (*ttrpc.Client, error) {
	path, err := socketPath(addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(conn, opts...), nil
}

func printJSON(v interface{}) {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}

// fail reports an error that is not a ttrpc status: bad usage, no server, a broken connection.
func fail(err error) int {
	printJSON(map[string]string{"error": err.Error()})
	return 2
}

type statusReply struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

func serve(args []string) int {
	fs := newFlags("serve")
	addr := fs.String("addr", "", "listen on unix://PATH")
	hvsock := fs.Bool("hvsock", false, "expect the hybrid vsock CONNECT handshake")
	fs.Parse(args)

	path, err := socketPath(*addr)
	if err != nil {
		return fail(err)
	}
	// A socket left behind by a killed server would make Listen fail.
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	var opts []ttrpc.ServerOpt
	if *hvsock {
		opts = append(opts, ttrpc.WithServerHandshaker(hybridVsock{timeout: 5 * time.Second}))
	}
	server, err := ttrpc.NewServer(opts...)
	if err != nil {
		return fail(err)
	}
	registerHealth(server)
	listener, err := net.Listen("unix", path)
	if err != nil {
		return fail(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		server.Close()
	}()
	fmt.Fprintf(os.Stderr, "%s: serving %s on unix://%s\n", peerName, healthService, path)
	if err := server.Serve(ctx, listener); !errors.Is(err, ttrpc.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

func call(args []string) int {
	fs := newFlags("call")
	addr := fs.String("addr", "", "server address, unix://PATH")
	method := fs.String("method", "Check", "Check or Version")
	timeout := fs.Duration("timeout", 10*time.Second, "connect and call timeout")
	fs.Parse(args)

	var resp interface{}
	switch *method {
	case "Check":
		resp = &HealthCheckResponse{}
	case "Version":
		resp = &VersionCheckResponse{}
	default:
		return fail(fmt.Errorf("unknown method %q (want Check or Version)", *method))
	}
	client, err := dial(*addr, *timeout)
	if err != nil {
		return fail(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := client.Call(ctx, healthService, *method, &CheckRequest{}, resp); err != nil {
		st, ok := status.FromError(err)
		if !ok {
			return fail(err)
		}
		printJSON(statusReply{Code: uint32(st.Code()), Message: st.Message()})
		return 1
	}
	printJSON(resp)
	return 0
}

func raw(args []string) int {
	fs := newFlags("raw")
	addr := fs.String("addr", "", "server address, unix://PATH")
	service := fs.String("service", "", "service name, e.g. grpc.Health")
	method := fs.String("method", "", "method name, e.g. Check")
	payloadHex := fs.String("payload-hex", "", "request payload, hex")
	timeout := fs.Duration("timeout", 10*time.Second, "connect and call timeout")
	fs.Parse(args)

	payload, err := hex.DecodeString(*payloadHex)
	if err != nil {
		return fail(fmt.Errorf("--payload-hex: %w", err))
	}
	if *service == "" || *method == "" {
		return fail(errors.New("--service and --method are required"))
	}
	// Client.Call folds the response's status into its error; the interceptor keeps the
	// response itself, to tell an absent status from an explicit OK.
	var response *ttrpc.Response
	keep := func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response,
		_ *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		response = resp
		return invoke(ctx, req, resp)
	}
	client, err := dial(*addr, *timeout, ttrpc.WithUnaryClientInterceptor(keep))
	if err != nil {
		return fail(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var reply rawMessage
	err = client.Call(ctx, *service, *method, &rawMessage{payload}, &reply)
	st, ok := status.FromError(err)
	if !ok {
		return fail(err)
	}
	printJSON(struct {
		statusReply
		PayloadHex    string `json:"payload_hex"`
		StatusPresent bool   `json:"status_present"`
	}{
		statusReply:   statusReply{Code: uint32(st.Code()), Message: st.Message()},
		PayloadHex:    hex.EncodeToString(reply.data),
		StatusPresent: response.Status != nil,
	})
	if st.Code() != 0 {
		return 1
	}
	return 0
}

type benchResult struct {
	Concurrency int     `json:"concurrency"`
	DurationS   float64 `json:"duration_s"`
	Calls       int     `json:"calls"`
	Errors      int     `json:"errors"`
	CallsPerS   float64 `json:"calls_per_s"`
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
	FirstError  string  `json:"first_error,omitempty"`
}

type benchWorker struct {
	latencies []time.Duration
	errors    int
	firstErr  error
}

func bench(args []string) int {
	fs := newFlags("bench")
	addr := fs.String("addr", "", "server address, unix://PATH")
	concurrency := fs.Int("concurrency", 1, "callers sharing the one connection")
	duration := fs.Duration("duration", 5*time.Second, "how long to keep calling")
	timeout := fs.Duration("timeout", 10*time.Second, "connect timeout, and how long past --duration to wait")
	fs.Parse(args)
	if *concurrency < 1 {
		return fail(errors.New("--concurrency must be at least 1"))
	}

	client, err := dial(*addr, *timeout)
	if err != nil {
		return fail(err)
	}
	defer client.Close()
	// Calls carry no deadline (a timeout would cost the server a timer per call); a
	// server that stops answering is cut off by closing the connection instead.
	watchdog := time.AfterFunc(*duration+*timeout, func() { client.Close() })
	defer watchdog.Stop()

	workers := make([]benchWorker, *concurrency)
	start := time.Now()
	end := start.Add(*duration)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func(w *benchWorker) {
			defer wg.Done()
			for time.Now().Before(end) {
				var resp HealthCheckResponse
				t0 := time.Now()
				err := client.Call(context.Background(), healthService, "Check", &CheckRequest{}, &resp)
				if err == nil && resp.Status != StatusServing {
					err = fmt.Errorf("Check answered %v", resp.Status)
				}
				if err != nil {
					w.errors++
					if w.firstErr == nil {
						w.firstErr = err
					}
					if errors.Is(err, ttrpc.ErrClosed) {
						return
					}
					continue
				}
				w.latencies = append(w.latencies, time.Since(t0))
			}
		}(&workers[i])
	}
	wg.Wait()
	elapsed := time.Since(start)

	result := benchResult{Concurrency: *concurrency, DurationS: elapsed.Seconds()}
	var latencies []time.Duration
	for _, w := range workers {
		latencies = append(latencies, w.latencies...)
		result.Errors += w.errors
		if w.firstErr != nil && result.FirstError == "" {
			result.FirstError = w.firstErr.Error()
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	result.Calls = len(latencies)
	result.CallsPerS = float64(result.Calls) / elapsed.Seconds()
	result.P50us = percentile(latencies, 0.50)
	result.P99us = percentile(latencies, 0.99)
	printJSON(result)
	if result.Errors > 0 {
		return 1
	}
	return 0
}

// percentile is the nearest-rank percentile of sorted latencies, in microseconds.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p*float64(len(sorted)))) - 1
	if rank < 0 {
		rank = 0
	}
	return float64(sorted[rank].Nanoseconds()) / 1e3
}
