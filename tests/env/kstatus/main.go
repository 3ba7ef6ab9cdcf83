// Command kstatus prints how kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library
// Flux, kpt and kubectl-style tooling use, judges one Kubernetes object.
//
// Usage: kstatus [FILE]   (reads stdin when FILE is absent or "-"; JSON or YAML)
// Output: one JSON line {"status": "Current|InProgress|Failed|...", "message": "..."}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run() error {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 1 && os.Args[1] != "-" {
		f, err := os.Open(os.Args[1])
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	// Through JSON, so numbers decode as int64 the way client-go delivers them to kstatus.
	data, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("parsing the object: %w", err)
	}
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("parsing the object: %w", err)
	}
	result, err := status.Compute(&obj)
	if err != nil {
		return fmt.Errorf("computing status: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]string{
		"status":  result.Status.String(),
		"message": result.Message,
	})
}
