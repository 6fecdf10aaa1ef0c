package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestQuickstartOnMiniredis(t *testing.T) {
	var out bytes.Buffer
	if err := run("", &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"gate1   sees quickstart/dev/v1/game/game1 up at 127.0.0.1:7101",
		"gate1   sees quickstart/dev/v1/game/game2 up at 127.0.0.1:7102",
		"gate1 knows 2 game servers",
		"gate1   sees quickstart/dev/v1/game/game2 gone",
		"game1   sees quickstart/dev/v1/game/game2 gone",
		"gate1 knows 1 game server(s): quickstart/dev/v1/game/game1",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
