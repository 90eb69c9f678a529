// go_select2_ns: Go's select over two buffered channels that are always
// ready, timed the way weft-bench times select2_ns, for `./run bench` to
// print beside it.
//
// Per op: one select with a receive case on each channel (no default), then
// a send of the message back to the channel it came from, so each channel
// always holds selectFill messages. GOMAXPROCS=1, the timing goroutine
// locked to the main thread and that thread pinned to the CPU it started
// on; runs of ops ops after a warm-up pass, the minimum kept, the median in
// a '#' line. Go's own baseline, a plain receive and the send back
// alternating between the two channels (weft's chan_try_pair_ns), goes in a
// '#' line with the ratio of the two.
//
// Standard library only: `go run bench/go/select.go` needs no module.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	runs       = 7
	ops        = 1000000
	selectCap  = 64
	selectFill = 8
)

func init() {
	// The main goroutine stays on the main thread, the one pinned below.
	runtime.LockOSThread()
}

// thisCPU is the CPU the calling thread last ran on, from field 39 of
// /proc/thread-self/stat (the syscall package has no getcpu), or -1.
func thisCPU() int {
	b, err := os.ReadFile("/proc/thread-self/stat")
	if err != nil {
		return -1
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // from field 3 on
	if len(f) < 37 {
		return -1
	}
	cpu, err := strconv.Atoi(f[36])
	if err != nil {
		return -1
	}
	return cpu
}

// pin binds the calling thread to the CPU it runs on; returns it, or -1.
func pin() int {
	var mask [16]uint64 // 1024 CPUs
	cpu := thisCPU()
	if cpu < 0 || cpu >= len(mask)*64 {
		return -1
	}
	mask[cpu/64] = 1 << (cpu % 64)
	if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, 0,
		uintptr(len(mask)*8), uintptr(unsafe.Pointer(&mask[0]))); e != 0 {
		return -1
	}
	return cpu
}

var sink uintptr

//go:noinline
func timeSelect2(a, b chan uintptr, n int) float64 {
	var sum uintptr
	t0 := time.Now()
	for i := 0; i < n; i++ {
		select {
		case v := <-a:
			sum += v
			a <- v
		case v := <-b:
			sum += v
			b <- v
		}
	}
	d := time.Since(t0)
	sink += sum
	return float64(d.Nanoseconds()) / float64(n)
}

//go:noinline
func timePair(a, b chan uintptr, n int) float64 {
	var sum uintptr
	t0 := time.Now()
	for i := 0; i < n; i++ {
		c := a
		if i&1 != 0 {
			c = b
		}
		v := <-c
		sum += v
		c <- v
	}
	d := time.Since(t0)
	sink += sum
	return float64(d.Nanoseconds()) / float64(n)
}

func minMedian(v []float64) (float64, float64) {
	sort.Float64s(v)
	return v[0], v[len(v)/2]
}

func main() {
	runtime.GOMAXPROCS(1)
	cpu := pin()
	a := make(chan uintptr, selectCap)
	b := make(chan uintptr, selectCap)
	for i := uintptr(0); i < selectFill; i++ {
		a <- i
		b <- i
	}
	var vs, vp, vr []float64
	// Runs of the two alternate; the first pass warms up and is not kept.
	for r := -1; r < runs; r++ {
		n := ops
		if r < 0 {
			n = ops / 10
		}
		s := timeSelect2(a, b, n)
		p := timePair(a, b, n)
		if r >= 0 {
			vs = append(vs, s)
			vp = append(vp, p)
			vr = append(vr, s/p)
		}
	}
	if len(a) != selectFill || len(b) != selectFill {
		fmt.Fprintf(os.Stderr, "go-select: the channels hold %d and %d messages, not %d\n",
			len(a), len(b), selectFill)
		os.Exit(1)
	}
	sMin, sMed := minMedian(vs)
	pMin, pMed := minMedian(vp)
	_, rMed := minMedian(vr)
	where := "not pinned"
	if cpu >= 0 {
		where = fmt.Sprintf("pinned to CPU %d", cpu)
	}
	fmt.Printf("# %s, GOMAXPROCS=%d, %s\n", runtime.Version(), runtime.GOMAXPROCS(0), where)
	fmt.Printf("# go_select2_ns: select over receive cases on two buffered channels of\n"+
		"#   capacity %d that hold %d messages each, + a send of the message back;\n"+
		"#   min of %d runs of %d (median %.1f)\n", selectCap, selectFill, runs, ops, sMed)
	fmt.Printf("# Go's baseline, receive + send back alternating between the two: %.1f ns\n"+
		"#   (median %.1f); select2 / baseline %.2f x (median of the runs' own %.2f)\n",
		pMin, pMed, sMin/pMin, rMed)
	fmt.Printf("go_select2_ns %.1f ns\n", sMin)
}
