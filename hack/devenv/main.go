// Command devenv starts the reference environment for a person: a
// throw-away PostgreSQL server and two Kubernetes API servers (two
// simulated clusters) on 127.0.0.1. It prints how to reach them and stops
// everything on Ctrl-C or SIGTERM. Run it with `make devenv`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

func main() {
	envFile := flag.String("env-file", "", "also write the environment as shell variable assignments to this file")
	flag.Parse()
	if err := run(*envFile); err != nil {
		fmt.Fprintln(os.Stderr, "devenv:", err)
		os.Exit(1)
	}
}

func run(envFile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Println("starting PostgreSQL and two clusters …")
	env, err := testenv.Start(ctx, "cluster-a", "cluster-b")
	if err != nil {
		return err
	}
	defer env.Stop()
	dsn, err := env.Postgres.CreateDatabase(ctx, "kss")
	if err != nil {
		return err
	}
	vars := fmt.Sprintf("KUBECONFIG_A=%s\nKUBECONFIG_B=%s\nDSN=%s\n",
		env.Clusters[0].Kubeconfig, env.Clusters[1].Kubeconfig, dsn)
	if envFile != "" {
		if err := os.WriteFile(envFile, []byte(vars), 0o600); err != nil {
			return err
		}
	}
	fmt.Print("\n" + vars + "\n")
	fmt.Println("for example: kubectl --kubeconfig $KUBECONFIG_A get ns")
	fmt.Println("Ctrl-C stops everything.")
	<-ctx.Done()
	fmt.Println("\nstopping …")
	return nil
}
