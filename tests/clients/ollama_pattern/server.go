// A Go server that discovers GPUs in short-lived runners, as Ollama does: each runner gets
// the bundle folder first on LD_LIBRARY_PATH.  Usage: server BUNDLE RUNNER N
package main

import (
	"os"
	"os/exec"
	"strconv"
	"time"
)

func main() {
	bundle, runner := os.Args[1], os.Args[2]
	count, _ := strconv.Atoi(os.Args[3])
	path := bundle
	if old := os.Getenv("LD_LIBRARY_PATH"); old != "" {
		path += ":" + old
	}
	for i := 0; i < count; i++ {
		cmd := exec.Command(runner)
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+path)
		cmd.Stdout = os.Stdout
		cmd.Run()
	}
	time.Sleep(150 * time.Millisecond)
}
