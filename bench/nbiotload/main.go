// Command nbiotload is the uplink load of bench/nbiot_e2e.py: CoAP confirmable POSTs
// (go-coap) or HTTP pushes (net/http), as fast as the server answers, so that the
// client is not what limits the rate (the Python client took most of two cores at
// ~600 requests/s).
//
//	nbiotload -mode coap|http -addr 127.0.0.1:5683 -conns 64 -inflight 4 < requests
//
// Each line of stdin is one request: "PATH HEXBODY" (CoAP: /nb/<identity>; HTTP:
// /ctwing). -conns UDP endpoints (CoAP: each its own socket, as a fleet of devices
// is) or TCP connections (HTTP), each with -inflight requests outstanding. Every
// request must be answered 2.04 Changed (CoAP) or 200 (HTTP). Prints one JSON object:
// requests, seconds (from the first send to the last answer), bad (answers that were
// not success, with the first few), latency_ms p50/p90/p99.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
)

type request struct {
	path string
	body []byte
}

type result struct {
	Requests  int                `json:"requests"`
	Seconds   float64            `json:"seconds"`
	Bad       int                `json:"bad"`
	FirstBad  []string           `json:"first_bad"`
	LatencyMs map[string]float64 `json:"latency_ms"`
}

// sender sends one request and returns "" on success, else what went wrong.
type sender func(ctx context.Context, r request) string

func readRequests(in io.Reader) ([]request, error) {
	var out []request
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		path, hexBody, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("line %d: not PATH HEXBODY", len(out)+1)
		}
		body, err := hex.DecodeString(hexBody)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", len(out)+1, err)
		}
		out = append(out, request{path, body})
	}
	return out, sc.Err()
}

func coapSenders(addr string, conns int) ([]sender, func(), error) {
	var senders []sender
	var closers []func() error
	for i := 0; i < conns; i++ {
		// NSTART is not enforced by go-coap; the retransmission timer is RFC 7252's.
		cc, err := udp.Dial(addr, options.WithTransmission(1, 2*time.Second, 4))
		if err != nil {
			return nil, nil, err
		}
		closers = append(closers, cc.Close)
		senders = append(senders, func(ctx context.Context, r request) string {
			resp, err := cc.Post(ctx, r.path, message.AppOctets, bytes.NewReader(r.body))
			if err != nil {
				return err.Error()
			}
			if resp.Code() != codes.Changed {
				body, _ := resp.ReadBody()
				return fmt.Sprintf("%s %v %q", r.path, resp.Code(), body)
			}
			return ""
		})
	}
	return senders, func() {
		for _, c := range closers {
			_ = c()
		}
	}, nil
}

func httpSenders(addr string, conns int) []sender {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
	}}
	send := func(ctx context.Context, r request) string {
		req, err := http.NewRequestWithContext(
			ctx, http.MethodPost, "http://"+addr+r.path, bytes.NewReader(r.body))
		if err != nil {
			return err.Error()
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err.Error()
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("%d %q", resp.StatusCode, body)
		}
		return ""
	}
	out := make([]sender, conns)
	for i := range out {
		out[i] = send // the transport's pool shares the connections out
	}
	return out
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

func main() {
	mode := flag.String("mode", "coap", "coap or http")
	addr := flag.String("addr", "127.0.0.1:5683", "host:port of the server")
	conns := flag.Int("conns", 64, "UDP endpoints (coap) or TCP connections (http)")
	inflight := flag.Int("inflight", 4, "requests outstanding per endpoint or connection")
	timeout := flag.Duration("timeout", 60*time.Second, "per request")
	flag.Parse()

	reqs, err := readRequests(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var senders []sender
	switch *mode {
	case "coap":
		var closeAll func()
		senders, closeAll, err = coapSenders(*addr, *conns)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer closeAll()
	case "http":
		senders = httpSenders(*addr, *conns)
		*inflight = 1 // HTTP/1.1: one request at a time per connection
	default:
		fmt.Fprintln(os.Stderr, "mode: coap or http")
		os.Exit(2)
	}

	latency := make([]float64, len(reqs))
	var next atomic.Int64
	var mu sync.Mutex
	res := result{Requests: len(reqs), FirstBad: []string{}}
	var wg sync.WaitGroup
	start := time.Now()
	for _, send := range senders {
		for k := 0; k < *inflight; k++ {
			wg.Add(1)
			go func(send sender) {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= len(reqs) {
						return
					}
					ctx, cancel := context.WithTimeout(context.Background(), *timeout)
					sent := time.Now()
					bad := send(ctx, reqs[i])
					latency[i] = float64(time.Since(sent).Microseconds()) / 1000
					cancel()
					if bad != "" {
						mu.Lock()
						res.Bad++
						if len(res.FirstBad) < 5 {
							res.FirstBad = append(res.FirstBad, bad)
						}
						mu.Unlock()
					}
				}
			}(send)
		}
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	sort.Float64s(latency)
	res.LatencyMs = map[string]float64{
		"p50": quantile(latency, 0.50), "p90": quantile(latency, 0.90), "p99": quantile(latency, 0.99),
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(2)
	}
}
