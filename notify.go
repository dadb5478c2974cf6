package main

// The optional wake-up hint (SPEC §4): on PostgreSQL the leader sends a
// NOTIFY after each write it commits, and followers LISTEN, so that they
// pull at once instead of at their next poll. It is only a hint. It carries
// nothing but a version number, the pull that follows is the same portable
// query as always, and the poll every POLL_SECONDS stays the fallback: a
// lost notification, a broken listening connection or a database without
// LISTEN/NOTIFY (CockroachDB) only make a follower wait for its next poll.
//
// This is the only file with PostgreSQL-only SQL; portable_test.go keeps
// it so.

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"
)

// notifyChannel is the PostgreSQL notification channel of the hint.
const notifyChannel = "kube_secret_sync"

// Notify tells listening followers that rows up to version are committed.
func (s *Store) Notify(ctx context.Context, version int64) error {
	_, err := s.pool.Exec(ctx, `SELECT pg_notify('`+notifyChannel+`', $1)`, strconv.FormatInt(version, 10))
	return err
}

// hintUnsupported reports whether err says that the database has no
// LISTEN/NOTIFY: an unknown pg_notify function (42883) or an unimplemented
// statement (0A000), as CockroachDB answers.
func hintUnsupported(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42883" || pgErr.Code == "0A000")
}

// listenForHints keeps a connection of its own LISTENing and signals wake
// (without blocking) on every notification, and once after each (re)start
// of listening, since rows may have been committed while it was not. It
// returns when ctx ends or when the database has no LISTEN.
func listenForHints(ctx context.Context, dsn string, log *logrus.Entry, wake chan<- struct{}) {
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	backoff := time.Second
	for {
		listened, err := listenOnce(ctx, dsn, signal)
		switch {
		case ctx.Err() != nil:
			return
		case hintUnsupported(err):
			log.Info("the database has no LISTEN/NOTIFY: pulling every POLL_SECONDS only")
			return
		case listened:
			backoff = time.Second
		}
		log.WithError(err).WithField("retry_in", backoff.String()).Debug("wake-up hint: not listening; polling meanwhile")
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// listenOnce listens on one connection until it fails. listened reports
// whether LISTEN succeeded.
func listenOnce(ctx context.Context, dsn string, signal func()) (listened bool, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return false, err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, `LISTEN `+notifyChannel); err != nil {
		return false, err
	}
	signal()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return true, err
		}
		signal()
	}
}
