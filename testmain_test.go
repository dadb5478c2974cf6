package main

import (
	"os"
	"testing"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }
