// burst: bench/burst.c's cold burst with goroutines, for bench/burst.sh to
// print beside it. N goroutines (os.Args[1], default 100000), goroutine i
// sleeps (i % 1000) ms, a WaitGroup gathers them; GOMAXPROCS=1, as weft's
// burst runs on one loop. Prints `go_burst_ms N <wall ms>` and
// `go_burst_rss_per_task N <bytes>` (VmHWM less VmRSS before the first
// spawn, per goroutine). Standard library only.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

func statusKB(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), field) {
			v, _ := strconv.ParseInt(strings.Fields(s.Text()[len(field):])[0], 10, 64)
			return v
		}
	}
	return -1
}

func main() {
	runtime.GOMAXPROCS(1)
	n := 100000
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	before := statusKB("VmRSS:")
	t0 := time.Now()
	var wg sync.WaitGroup
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func(i int) {
			time.Sleep(time.Duration(i%1000) * time.Millisecond)
			wg.Done()
		}(i)
	}
	wg.Wait()
	ms := float64(time.Since(t0).Nanoseconds()) / 1e6
	hwm := statusKB("VmHWM:")
	fmt.Printf("go_burst_ms %d %.0f ms\n", n, ms)
	fmt.Printf("go_burst_rss_per_task %d %.0f bytes\n", n, float64(hwm-before)*1024/float64(n))
}
