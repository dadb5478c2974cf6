package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// printer writes the demo's terminal output: numbered headlines, then one
// short line per fact checked. Colours only when stdout is a terminal (and
// NO_COLOR is not set), so that a log file or CI output stays plain text.
type printer struct {
	w     io.Writer
	color bool
}

func newPrinter(f *os.File) *printer {
	color := false
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		color = os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb"
	}
	return &printer{w: f, color: color}
}

// ANSI SGR codes.
const (
	sgrBold   = "1"
	sgrDim    = "2"
	sgrRed    = "31"
	sgrGreen  = "32"
	sgrYellow = "33"
	sgrCyan   = "36"
)

func (p *printer) paint(code, s string) string {
	if !p.color {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func (p *printer) title(s string) {
	fmt.Fprintln(p.w, p.paint(sgrBold, s))
}

func (p *printer) headline(n, total int, s string) {
	fmt.Fprintf(p.w, "\n%s %s\n", p.paint(sgrCyan, fmt.Sprintf("[%d/%d]", n, total)), p.paint(sgrBold, s))
}

// info is something done or shown; ok a check that passed; warn and fail
// the opposite.
func (p *printer) info(format string, a ...any) {
	fmt.Fprintf(p.w, "  %s %s\n", p.paint(sgrDim, "·"), fmt.Sprintf(format, a...))
}

func (p *printer) ok(format string, a ...any) {
	fmt.Fprintf(p.w, "  %s %s\n", p.paint(sgrGreen, "✓"), fmt.Sprintf(format, a...))
}

func (p *printer) warn(format string, a ...any) {
	fmt.Fprintf(p.w, "  %s %s\n", p.paint(sgrYellow, "!"), fmt.Sprintf(format, a...))
}

func (p *printer) fail(format string, a ...any) {
	fmt.Fprintf(p.w, "  %s %s\n", p.paint(sgrRed, "✗"), p.paint(sgrRed, fmt.Sprintf(format, a...)))
}

// block prints preformatted lines (a table, a log tail) indented under the
// current step.
func (p *printer) block(text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Fprintf(p.w, "      %s\n", line)
	}
}

// dim prints lines in the background colour, for log tails.
func (p *printer) dim(prefix string, lines []string) {
	for _, line := range lines {
		fmt.Fprintf(p.w, "      %s %s\n", p.paint(sgrDim, prefix), line)
	}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
