// apiserver-proxy: a node-local TCP load balancer in front of every master's kube-apiserver, so
// the kubelet and kube-proxy of a worker (whose kubeconfigs name one server) reach the API
// through whichever masters are ready. TLS passes through untouched: clients verify the
// apiserver's own certificate (by its `kubernetes` SAN) end to end.
//
// Each backend's /readyz is polled; new connections go round-robin to backends whose last poll
// answered 200 (an apiserver that is shutting down fails /readyz for its shutdown delay while
// still serving, so it leaves the rotation before it stops listening). A backend that refuses a
// connection is skipped at once and the next one tried. With no ready backend, every backend is
// tried: a client then learns the truth from the apiservers themselves.
//
// `apiserver-proxy -probe URL` checks one /readyz (the job's bin/healthy uses it).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type backend struct {
	addr  string
	ready atomic.Bool
}

type proxy struct {
	backends    []*backend
	next        atomic.Uint64
	dialTimeout time.Duration
}

// order gives the backends to try for one connection: ready ones first, round-robin, then the
// rest (a connection is never refused while some backend might take it).
func (p *proxy) order() []*backend {
	n := len(p.backends)
	start := int(p.next.Add(1) % uint64(n))
	var ready, rest []*backend
	for i := 0; i < n; i++ {
		b := p.backends[(start+i)%n]
		if b.ready.Load() {
			ready = append(ready, b)
		} else {
			rest = append(rest, b)
		}
	}
	return append(ready, rest...)
}

func (p *proxy) serve(client net.Conn) {
	defer client.Close()
	for _, b := range p.order() {
		upstream, err := net.DialTimeout("tcp", b.addr, p.dialTimeout)
		if err != nil {
			log.Printf("backend %s: %v", b.addr, err)
			b.ready.Store(false)
			continue
		}
		splice(client, upstream)
		return
	}
	log.Printf("no backend took a connection from %s", client.RemoteAddr())
}

// splice copies both ways until both sides are done, passing half-closes on.
func splice(a, b net.Conn) {
	defer b.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go pipe(a, b)
	go pipe(b, a)
	wg.Wait()
}

func httpClient(caFile, serverName string, timeout time.Duration) (*http.Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: serverName},
			DisableKeepAlives: true,
		},
	}, nil
}

func readyz(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}

func (p *proxy) poll(c *http.Client, b *backend, every time.Duration) {
	for {
		err := readyz(c, "https://"+b.addr+"/readyz")
		was := b.ready.Swap(err == nil)
		if was != (err == nil) {
			if err == nil {
				log.Printf("backend %s: ready", b.addr)
			} else {
				log.Printf("backend %s: out of rotation: %v", b.addr, err)
			}
		}
		time.Sleep(every)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:6443", "address to listen on")
	backends := flag.String("backends", "", "comma-separated host:port of every kube-apiserver")
	ca := flag.String("ca", "", "the cluster CA (PEM) the apiservers' certificates chain to")
	serverName := flag.String("server-name", "kubernetes", "the name the apiservers' certificates carry")
	every := flag.Duration("poll", 500*time.Millisecond, "how often each backend's /readyz is polled")
	dialTimeout := flag.Duration("dial-timeout", 2*time.Second, "how long a connection to one backend may take")
	probe := flag.String("probe", "", "check this /readyz URL once and exit 0 when it answers 200")
	flag.Parse()

	c, err := httpClient(*ca, *serverName, 2*time.Second)
	if err != nil {
		log.Fatalf("-ca: %v", err)
	}
	if *probe != "" {
		if err := readyz(c, *probe); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	p := &proxy{dialTimeout: *dialTimeout}
	for _, a := range strings.Split(*backends, ",") {
		if a = strings.TrimSpace(a); a != "" {
			if _, _, err := net.SplitHostPort(a); err != nil {
				log.Fatalf("-backends: %q: %v", a, err)
			}
			p.backends = append(p.backends, &backend{addr: a})
		}
	}
	if len(p.backends) == 0 {
		log.Fatal("-backends names no apiserver")
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for _, b := range p.backends {
		go p.poll(c, b, *every)
	}
	log.Printf("listening on %s for %d apiservers", *listen, len(p.backends))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		// Connections already spliced end with the process; the kubelet and kube-proxy stop first.
		l.Close()
		os.Exit(0)
	}()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			log.Printf("accept: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go p.serve(conn)
	}
}
