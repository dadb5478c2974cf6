// Command cert-manager-controller runs the real cert-manager controllers
// (certificates, certificate requests with the SelfSigned, CA and ACME
// issuers and the approver, issuers, ClusterIssuers, ACME orders and
// challenges) against one cluster, for kube-secret-sync's tests. The module
// proxy serves cert-manager's packages but not its cmd/, so this wires the
// controllers itself from public packages, with every option set by hand
// (the defaults package imports the Venafi issuer, which is left out).
//
// With --http01-solver-pods it also runs the HTTP-01 solver Pods that
// cert-manager creates, standing in for the kubelet (see solverpods.go).
//
// Usage: cert-manager-controller --kubeconfig FILE [--cluster-resource-namespace NS]
//
//	[--acme-http01-solver-nameservers HOST:PORT] [--http01-solver-pods IP]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/cert-manager/cert-manager/pkg/controller"

	_ "github.com/cert-manager/cert-manager/pkg/controller/acmechallenges"
	_ "github.com/cert-manager/cert-manager/pkg/controller/acmeorders"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/acme"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/acme"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	clusterNS := flag.String("cluster-resource-namespace", "cert-manager", "namespace of the ClusterIssuers' Secrets")
	solverNameservers := flag.String("acme-http01-solver-nameservers", "", "host:port of a DNS server for the HTTP-01 self-check")
	solverPods := flag.String("http01-solver-pods", "", "run the HTTP-01 solver Pods in process and publish them in EndpointSlices at this IPv4 address of the machine")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *kubeconfig, *clusterNS, *solverNameservers, *solverPods); err != nil {
		fmt.Fprintln(os.Stderr, "cert-manager-controller:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, clusterNS, solverNameservers, solverPods string) error {
	opts := controller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: clusterNS,
		},
		ACMEOptions: controller.ACMEOptions{
			HTTP01SolverImage:                 "quay.io/jetstack/cert-manager-acmesolver:v1.21.1",
			HTTP01SolverResourceRequestCPU:    resource.MustParse("10m"),
			HTTP01SolverResourceRequestMemory: resource.MustParse("64Mi"),
			HTTP01SolverResourceLimitsCPU:     resource.MustParse("100m"),
			HTTP01SolverResourceLimitsMemory:  resource.MustParse("64Mi"),
			ACMEHTTP01SolverRunAsNonRoot:      true,
			DNS01CheckRetryPeriod:             10 * time.Second,
		},
		CertificateOptions: controller.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Second,
			CertificateRequestMaximumBackoffDuration: 10 * time.Second,
		},
		SchedulerOptions: controller.SchedulerOptions{MaxConcurrentChallenges: 60},
	}
	if solverNameservers != "" {
		opts.HTTP01SolverNameservers = []string{solverNameservers}
	}
	factory, err := controller.NewContextFactory(ctx, opts)
	if err != nil {
		return err
	}
	var names []string
	for name := range controller.Known() {
		names = append(names, name)
	}
	slices.Sort(names)
	var ctrls []controller.Interface
	for _, name := range names {
		c, err := controller.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		ctrls = append(ctrls, c)
	}
	built, err := factory.Build()
	if err != nil {
		return err
	}
	built.KubeSharedInformerFactory.Start(ctx.Done())
	built.SharedInformerFactory.Start(ctx.Done())
	built.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	fmt.Fprintf(os.Stderr, "cert-manager-controller: running %v\n", names)
	var wg sync.WaitGroup
	if solverPods != "" {
		wg.Go(func() { newSolverPods(built.Client, solverPods).run(ctx) })
	}
	errs := make(chan error, len(ctrls))
	for i, c := range ctrls {
		wg.Go(func() {
			if err := c.Run(2, ctx); err != nil {
				errs <- fmt.Errorf("controller %s: %w", names[i], err)
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}
