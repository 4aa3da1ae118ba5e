package cogs

import (
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// warmPool runs message handlers on a fixed set of long-lived goroutines.
//
// watermill's Router starts a goroutine per message. Its stack starts at
// 2 KiB and grew twice per metering record (walking the message's context
// chain, then parsing the event time): copying stacks was a fifth of the
// projector's CPU at 25k records/s. A pool goroutine keeps its grown stack,
// so the per-message goroutine only hands the message over and waits.
// Handlers still run one message per partition at a time, as delivered.
type warmPool struct {
	jobs chan *warmJob
	stop chan struct{}
	wg   sync.WaitGroup
}

type warmJob struct {
	h    message.HandlerFunc
	msg  *message.Message
	out  []*message.Message
	err  error
	done chan struct{}
}

var warmJobs = sync.Pool{New: func() any { return &warmJob{done: make(chan struct{}, 1)} }}

func newWarmPool(n int) *warmPool {
	w := &warmPool{jobs: make(chan *warmJob), stop: make(chan struct{})}
	w.wg.Add(n)
	for range n {
		go func() {
			defer w.wg.Done()
			for {
				select {
				case j := <-w.jobs:
					j.run()
				case <-w.stop:
					return
				}
			}
		}()
	}
	return w
}

func (j *warmJob) run() {
	defer func() {
		if r := recover(); r != nil {
			j.out, j.err = nil, fmt.Errorf("cogs: handler panicked: %v", r)
		}
		j.done <- struct{}{}
	}()
	j.out, j.err = j.h(j.msg)
}

// middleware runs the rest of the chain on a pool goroutine (on the
// calling one once the pool is closed). It must be the outermost
// middleware.
func (w *warmPool) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		j := warmJobs.Get().(*warmJob)
		j.h, j.msg = h, msg
		select {
		case w.jobs <- j:
		case <-w.stop:
			*j = warmJob{done: j.done}
			warmJobs.Put(j)
			return h(msg)
		}
		<-j.done
		out, err := j.out, j.err
		*j = warmJob{done: j.done}
		warmJobs.Put(j)
		return out, err
	}
}

// close stops the goroutines after the jobs they hold; handlers still
// running (a router that timed out closing) finish on their own goroutines.
func (w *warmPool) close() {
	close(w.stop)
	w.wg.Wait()
}
