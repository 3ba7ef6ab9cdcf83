// Command kstatus judges one Kubernetes object the way GitOps tools do, for the conformance
// tests (tests/e2e/kstatus.rs):
//   - kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library Flux and kpt use;
//   - with -argocd-health SCRIPT, also an Argo CD Lua health check, run under gopher-lua with
//     the libraries and value conversion Argo CD uses (only package, base and table opened;
//     JSON numbers become Lua numbers; a one-second limit).
//
// Usage: kstatus [-argocd-health SCRIPT] [FILE]   (reads stdin when FILE is absent or "-")
// Output: one JSON line {"status": "...", "message": "...", "argocd": {"status": "...", "message": "..."}}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	Status  string   `json:"status"`
	Message string   `json:"message"`
	ArgoCD  *verdict `json:"argocd,omitempty"`
}

func main() {
	healthScript := flag.String("argocd-health", "", "an Argo CD health.lua to run on the object too")
	flag.Parse()
	if err := run(*healthScript, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(healthScript, file string) error {
	in := io.Reader(os.Stdin)
	if file != "" && file != "-" {
		f, err := os.Open(file)
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
	out := verdict{Status: result.Status.String(), Message: result.Message}
	if healthScript != "" {
		script, err := os.ReadFile(healthScript)
		if err != nil {
			return err
		}
		if out.ArgoCD, err = argoHealth(obj.Object, string(script)); err != nil {
			return fmt.Errorf("running %s: %w", healthScript, err)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func argoHealth(obj map[string]interface{}, script string) (*verdict, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for name, open := range map[string]lua.LGFunction{
		lua.LoadLibName: lua.OpenPackage,
		lua.BaseLibName: lua.OpenBase,
		lua.TabLibName:  lua.OpenTable,
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(open), Protect: true}, lua.LString(name)); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	hs, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	v := &verdict{Status: lua.LVAsString(hs.RawGetString("status"))}
	if m := hs.RawGetString("message"); m != lua.LNil {
		v.Message = lua.LVAsString(m)
	}
	return v, nil
}

// toLua converts a decoded JSON value the way Argo CD hands objects to health scripts.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case []interface{}:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]interface{}:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetString(key, toLua(l, item))
		}
		return t
	}
	return lua.LNil
}
