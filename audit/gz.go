package audit

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// memberSize is how many uncompressed bytes go into one gzip member. Members
// are compressed independently and concatenated (RFC 1952 allows any number;
// gzip, tar and Go's gzip.Reader read them as one stream), so compression
// runs on every core and the output depends only on the input bytes, the
// level and this constant — never on timing.
const memberSize = 1 << 20

// parallelGzip compresses what is written to it as independent gzip members
// of memberSize bytes, on up to workers goroutines, and writes the members to
// w in order. Headers carry no name and mtime 0, so output is deterministic.
// Close flushes the last member; it does not close w.
type parallelGzip struct {
	w     io.Writer
	level int
	buf   []byte

	jobs    chan *gzJob
	ordered chan *gzJob
	done    chan error
	wg      sync.WaitGroup
	free    sync.Pool
	closed  bool
	members int
	failed  atomic.Bool // set by drain once w failed, so Write stops early
}

type gzJob struct {
	in   []byte
	out  bytes.Buffer
	err  error
	done chan struct{}
}

func newParallelGzip(w io.Writer, level, workers int) (*parallelGzip, error) {
	if _, err := gzip.NewWriterLevel(io.Discard, level); err != nil {
		return nil, fmt.Errorf("audit: gzip level %d: %w", level, err)
	}
	workers = max(workers, 1)
	z := &parallelGzip{w: w, level: level, jobs: make(chan *gzJob, workers), ordered: make(chan *gzJob, 2*workers+1), done: make(chan error, 1)}
	z.free.New = func() any { return make([]byte, 0, memberSize) }
	z.buf = z.free.Get().([]byte)
	for range workers {
		z.wg.Add(1)
		go z.compress()
	}
	go z.drain()
	return z, nil
}

func (z *parallelGzip) compress() {
	defer z.wg.Done()
	var gw *gzip.Writer
	for j := range z.jobs {
		if gw == nil {
			gw, _ = gzip.NewWriterLevel(&j.out, z.level) // level checked in newParallelGzip
		} else {
			gw.Reset(&j.out)
		}
		if _, err := gw.Write(j.in); err != nil {
			j.err = err
		} else {
			j.err = gw.Close()
		}
		close(j.done)
	}
}

// drain writes finished members in submission order.
func (z *parallelGzip) drain() {
	var err error
	for j := range z.ordered {
		<-j.done
		if err == nil {
			err = j.err
		}
		if err == nil {
			if _, err = j.out.WriteTo(z.w); err != nil {
				z.failed.Store(true)
			}
		}
		z.free.Put(j.in[:0])
	}
	z.done <- err
}

func (z *parallelGzip) submit() {
	if len(z.buf) == 0 {
		return
	}
	j := &gzJob{in: z.buf, done: make(chan struct{})}
	z.ordered <- j
	z.jobs <- j
	z.members++
	z.buf = z.free.Get().([]byte)
}

func (z *parallelGzip) Write(p []byte) (int, error) {
	if z.failed.Load() {
		return 0, errors.New("audit: gzip: output failed")
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), memberSize-len(z.buf))
		z.buf = append(z.buf, p[:k]...)
		p = p[k:]
		if len(z.buf) == memberSize {
			z.submit()
		}
	}
	return n, nil
}

// Close compresses the rest, waits for every member and returns the first
// error. An empty stream still gets one (empty) member, so the output is
// always a valid gzip file.
func (z *parallelGzip) Close() error {
	if z.closed {
		return nil
	}
	z.closed = true
	if len(z.buf) > 0 || z.members == 0 {
		j := &gzJob{in: z.buf, done: make(chan struct{})}
		z.ordered <- j
		z.jobs <- j
	}
	close(z.jobs)
	close(z.ordered)
	z.wg.Wait()
	if err := <-z.done; err != nil {
		return fmt.Errorf("audit: gzip: %w", err)
	}
	return nil
}
