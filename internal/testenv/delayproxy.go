package testenv

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DelayProxy is a TCP proxy that delays every byte by a fixed time in each
// direction, without limiting throughput: a database in another region,
// on this machine. A round trip through it costs twice the delay.
type DelayProxy struct {
	Addr string // host:port to connect to instead of the target

	ln    net.Listener
	delay time.Duration
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	turns atomic.Int64
	down  atomic.Int64 // bytes from the servers
}

// BytesFromServer counts the bytes the servers sent the clients.
func (p *DelayProxy) BytesFromServer() int64 { return p.down.Load() }

// Turns counts the round trips the clients started: each time a client
// sent after its server had last sent (or at its first send). Pipelined
// statements count once.
func (p *DelayProxy) Turns() int64 { return p.turns.Load() }

// StartDelayProxy listens on a free loopback port and forwards each
// connection to target, delaying each direction by oneWay.
func StartDelayProxy(target string, oneWay time.Duration) (*DelayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &DelayProxy{Addr: ln.Addr().String(), ln: ln, delay: oneWay, conns: map[net.Conn]struct{}{}}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.serve(c, target) })
		}
	})
	return p, nil
}

func (p *DelayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *DelayProxy) serve(client net.Conn, target string) {
	server, err := net.Dial("tcp", target)
	if err != nil {
		_ = client.Close()
		return
	}
	if !p.track(client) || !p.track(server) {
		_ = client.Close()
		_ = server.Close()
		return
	}
	// serverSpoke: whether the server sent last (so that the client's
	// next bytes start a round trip).
	var mu sync.Mutex
	serverSpoke := true
	spoke := func(byServer bool) {
		mu.Lock()
		defer mu.Unlock()
		if !byServer && serverSpoke {
			p.turns.Add(1)
		}
		serverSpoke = byServer
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(server, client, func(int) { spoke(false) }) })
	wg.Go(func() { p.pipe(client, server, func(n int) { p.down.Add(int64(n)); spoke(true) }) })
	wg.Wait()
}

// pipe copies src to dst, each chunk delivered p.delay after it was read
// (and noted, as read).
func (p *DelayProxy) pipe(dst, src net.Conn, read func(n int)) {
	type chunk struct {
		at   time.Time
		data []byte
	}
	queue := make(chan chunk, 4096)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				read(n)
				queue <- chunk{time.Now().Add(p.delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range queue {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	// Let the other side see the end, once everything read was delivered.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		_ = dst.Close()
	}
	for range queue { // drain, if the write failed
	}
}

// Close stops listening and cuts every connection.
func (p *DelayProxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

var _ io.Closer = (*DelayProxy)(nil)
