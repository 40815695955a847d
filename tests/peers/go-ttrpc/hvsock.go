package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// hybridVsock is the host side of the hybrid vsock handshake (Firecracker, Cloud
// Hypervisor): a client's first line is "CONNECT <port>\n", the answer "OK <port>\n", and
// the connection carries ttrpc from then on.
type hybridVsock struct {
	timeout time.Duration
}

func (h hybridVsock) Handshake(ctx context.Context, conn net.Conn) (net.Conn, interface{}, error) {
	// ttrpc.Server runs handshakes in its accept loop: a silent client must not stall it.
	if err := conn.SetDeadline(time.Now().Add(h.timeout)); err != nil {
		return nil, nil, err
	}
	line, err := readLine(conn, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("hybrid vsock: %w", err)
	}
	verb, arg, _ := strings.Cut(line, " ")
	port, err := strconv.ParseUint(arg, 10, 32)
	if verb != "CONNECT" || err != nil {
		return nil, nil, fmt.Errorf("hybrid vsock: expected CONNECT <port>, got %q", line)
	}
	if _, err := fmt.Fprintf(conn, "OK %d\n", port); err != nil {
		return nil, nil, err
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, nil, err
	}
	return conn, uint32(port), nil
}

// readLine reads up to a newline one byte at a time: a buffered reader could swallow the
// start of the first ttrpc frame.
func readLine(r io.Reader, limit int) (string, error) {
	line := make([]byte, 0, limit)
	b := make([]byte, 1)
	for len(line) < limit {
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", fmt.Errorf("no newline in the first %d bytes", limit)
}
