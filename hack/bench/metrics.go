package main

import (
	"bufio"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
)

// sample is one line of the Prometheus text exposition format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseSamples reads the samples of a Prometheus text exposition; lines it
// cannot read (comments, histograms' odd values) are skipped.
func parseSamples(exposition string) []sample {
	var out []sample
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if s, ok := parseSample(sc.Text()); ok {
			out = append(out, s)
		}
	}
	return out
}

func parseSample(line string) (sample, bool) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return sample{}, false
	}
	s := sample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return sample{}, false
	}
	s.name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, " ,")
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.Index(line, `="`)
			if eq <= 0 {
				return sample{}, false
			}
			key := line[:eq]
			line = line[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(line); j++ {
				c := line[j]
				if c == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[j])
					}
					continue
				}
				if c == '"' {
					line, closed = line[j+1:], true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return sample{}, false
			}
			s.labels[key] = val.String()
		}
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return sample{}, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return sample{}, false
	}
	s.value = v
	return s, true
}

// sumSamples adds the values of the samples named name whose labels pass keep.
func sumSamples(ss []sample, name string, keep func(map[string]string) bool) float64 {
	var sum float64
	for _, s := range ss {
		if s.name == name && (keep == nil || keep(s.labels)) {
			sum += s.value
		}
	}
	return sum
}

// apiWrites are an API server's completed write requests, by
// "resource verb", from apiserver_request_total.
type apiWrites map[string]float64

// writeVerbs are apiserver_request_total's verbs that change an object.
var writeVerbs = map[string]bool{"POST": true, "PUT": true, "PATCH": true, "DELETE": true, "DELETECOLLECTION": true, "APPLY": true}

// syncResources are what the daemon writes as sync work. Leases (leader
// election renews one every few seconds) and Events are not sync work.
var syncResources = map[string]bool{"secrets": true, "configmaps": true, "namespaces": true}

func countWrites(ss []sample) apiWrites {
	w := apiWrites{}
	for _, s := range ss {
		if s.name != "apiserver_request_total" || !writeVerbs[s.labels["verb"]] {
			continue
		}
		res := s.labels["resource"]
		if sub := s.labels["subresource"]; sub != "" {
			res += "/" + sub
		}
		w[res+" "+s.labels["verb"]] += s.value
	}
	return w
}

// scrapeAPIWrites reads the API server's own /metrics with the cluster's
// administrator client.
func scrapeAPIWrites(ctx context.Context, c kubernetes.Interface) (apiWrites, error) {
	b, err := c.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver /metrics: %w", err)
	}
	return countWrites(parseSamples(string(b))), nil
}

// diff returns after - before for every key that changed.
func (after apiWrites) diff(before apiWrites) apiWrites {
	d := apiWrites{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// sync sums the writes to syncResources.
func (w apiWrites) sync() float64 {
	var n float64
	for k, v := range w {
		res, _, _ := strings.Cut(k, " ")
		res, _, _ = strings.Cut(res, "/")
		if syncResources[res] {
			n += v
		}
	}
	return n
}

func (w apiWrites) String() string {
	if len(w) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range w {
		parts = append(parts, fmt.Sprintf("%s %g", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
