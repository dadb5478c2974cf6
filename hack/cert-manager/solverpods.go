package main

// A stand-in for the kubelet and the EndpointSlice controller, which a
// cluster made of a bare kube-apiserver lacks, for cert-manager's HTTP-01
// solver Pods only. For each solver Pod it runs cert-manager's own solver
// (the acmesolver image's code, pkg/issuer/acme/http/solver) in this
// process, with the Pod's --domain, --token and --key, and publishes its
// address in an EndpointSlice of the Service that selects the Pod, as the
// EndpointSlice controller would. An ingress controller that routes by
// EndpointSlices, as ingress-nginx does, then reaches it.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/cert-manager/cert-manager/pkg/issuer/acme/http/solver"
)

const (
	solverLabel = "acme.cert-manager.io/http01-solver=true"
	// managedBy marks the EndpointSlices written here, so that only those
	// are updated or removed.
	managedBy = "cert-manager-test-standin"
)

type solverPods struct {
	client  kubernetes.Interface
	address string // where the solvers are reached (Kubernetes refuses loopback addresses in EndpointSlices)
	log     logr.Logger
	running map[types.UID]*runningSolver
}

type runningSolver struct {
	solver *solver.HTTP01Solver
	port   int
	pod    *corev1.Pod
}

func newSolverPods(client kubernetes.Interface, address string) *solverPods {
	log := funcr.New(func(prefix, args string) {
		fmt.Fprintln(os.Stderr, "http01-solver:", prefix, args)
	}, funcr.Options{})
	return &solverPods{client: client, address: address, log: log, running: map[types.UID]*runningSolver{}}
}

// run reconciles every quarter second until ctx ends, then stops the
// solvers.
func (s *solverPods) run(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := s.sync(ctx); err != nil && ctx.Err() == nil {
			s.log.Error(err, "sync")
		}
	}, 250*time.Millisecond)
	for _, r := range s.running {
		_ = r.solver.Close()
	}
}

func (s *solverPods) sync(ctx context.Context) error {
	pods, err := s.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: solverLabel})
	if err != nil {
		return err
	}
	live := map[types.UID]bool{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.DeletionTimestamp != nil {
			continue
		}
		live[pod.UID] = true
		if s.running[pod.UID] == nil {
			r, err := s.start(pod)
			if err != nil {
				s.log.Error(err, "start", "pod", pod.Namespace+"/"+pod.Name)
				continue
			}
			s.running[pod.UID] = r
		}
	}
	for uid, r := range s.running {
		if !live[uid] {
			_ = r.solver.Close()
			delete(s.running, uid)
		}
	}
	return s.publish(ctx)
}

// start runs pod's solver on a free port of this machine (a real Pod has
// an address of its own; these share one, so each gets its own port). The
// solver listens on every interface.
func (s *solverPods) start(pod *corev1.Pod) (*runningSolver, error) {
	if len(pod.Spec.Containers) != 1 {
		return nil, fmt.Errorf("want one container, the Pod has %d", len(pod.Spec.Containers))
	}
	args := map[string]string{}
	for _, a := range pod.Spec.Containers[0].Args {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		args[k] = v
	}
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	h := &solver.HTTP01Solver{ListenPort: port, Domain: args["domain"], Token: args["token"], Key: args["key"]}
	log := s.log.WithValues("pod", pod.Namespace+"/"+pod.Name)
	go func() {
		if err := h.Listen(log); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(err, "listen")
		}
	}()
	return &runningSolver{solver: h, port: port, pod: pod}, nil
}

// publish gives each solver Service an EndpointSlice with the addresses of
// the solvers it selects, and removes the slices of Services that are gone.
func (s *solverPods) publish(ctx context.Context) error {
	svcs, err := s.client.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: solverLabel})
	if err != nil {
		return err
	}
	want := map[types.NamespacedName]bool{}
	for _, svc := range svcs.Items {
		name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		want[name] = true
		if err := s.writeSlice(ctx, &svc); err != nil {
			return fmt.Errorf("EndpointSlice of %s: %w", name, err)
		}
	}
	slices, err := s.client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelManagedBy + "=" + managedBy})
	if err != nil {
		return err
	}
	for _, sl := range slices.Items {
		if !want[types.NamespacedName{Namespace: sl.Namespace, Name: sl.Name}] {
			err := s.client.DiscoveryV1().EndpointSlices(sl.Namespace).Delete(ctx, sl.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	return nil
}

func (s *solverPods) writeSlice(ctx context.Context, svc *corev1.Service) error {
	if len(svc.Spec.Ports) != 1 || len(svc.Spec.Selector) == 0 {
		return fmt.Errorf("want one port and a selector")
	}
	selector := labels.SelectorFromSet(svc.Spec.Selector)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: svc.Namespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc.Name,
			discoveryv1.LabelManagedBy:   managedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	// One port per slice: the solvers a Service selects normally number
	// one; were there more, each would need a slice of its own.
	for _, r := range s.running {
		if r.pod.Namespace != svc.Namespace || !selector.Matches(labels.Set(r.pod.Labels)) {
			continue
		}
		slice.Ports = []discoveryv1.EndpointPort{{Name: ptr.To(svc.Spec.Ports[0].Name), Port: ptr.To(int32(r.port)), Protocol: ptr.To(corev1.ProtocolTCP)}}
		slice.Endpoints = []discoveryv1.Endpoint{{
			Addresses:  []string{s.address},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: r.pod.Namespace, Name: r.pod.Name, UID: r.pod.UID},
		}}
		break
	}
	slices := s.client.DiscoveryV1().EndpointSlices(svc.Namespace)
	cur, err := slices.Get(ctx, svc.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
		return err
	case err != nil:
		return err
	case cur.Labels[discoveryv1.LabelManagedBy] != managedBy:
		return fmt.Errorf("an EndpointSlice of that name exists, not managed by %s", managedBy)
	case endpointsEqual(cur, slice):
		return nil
	}
	cur.Ports, cur.Endpoints = slice.Ports, slice.Endpoints
	maps.Copy(cur.Labels, slice.Labels)
	_, err = slices.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

func endpointsEqual(a, b *discoveryv1.EndpointSlice) bool {
	key := func(s *discoveryv1.EndpointSlice) string {
		var b strings.Builder
		for _, p := range s.Ports {
			b.WriteString(ptr.Deref(p.Name, "") + ":" + strconv.Itoa(int(ptr.Deref(p.Port, 0))) + ";")
		}
		for _, e := range s.Endpoints {
			b.WriteString(strings.Join(e.Addresses, ",") + ";")
		}
		return b.String()
	}
	return key(a) == key(b)
}
