// pause: the sandbox ("pause") container of the local real node. It holds the pod's namespaces and
// waits for a signal; it cannot be pulled here (no registry), so hack/realnode.py builds it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
}
