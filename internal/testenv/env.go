package testenv

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Env is a whole reference environment: one PostgreSQL server and n
// clusters, as used by the demo and the devenv command.
type Env struct {
	Postgres *Postgres
	Clusters []*Cluster
}

// Start starts PostgreSQL and the named clusters in parallel.
func Start(ctx context.Context, clusterNames ...string) (*Env, error) {
	assets, err := KubeAssetsDir()
	if err != nil {
		return nil, err
	}
	e := &Env{Clusters: make([]*Cluster, len(clusterNames))}
	errs := make([]error, len(clusterNames)+1)
	var wg sync.WaitGroup
	for i, name := range clusterNames {
		wg.Go(func() {
			e.Clusters[i], errs[i] = StartCluster(ctx, assets, name)
		})
	}
	wg.Go(func() {
		e.Postgres, errs[len(clusterNames)] = StartPostgres(ctx)
	})
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.Stop()
		return nil, fmt.Errorf("start environment: %w", err)
	}
	return e, nil
}

// Stop stops everything Start started.
func (e *Env) Stop() {
	var wg sync.WaitGroup
	for _, c := range e.Clusters {
		wg.Go(c.Stop)
	}
	wg.Go(e.Postgres.Stop)
	wg.Wait()
}
