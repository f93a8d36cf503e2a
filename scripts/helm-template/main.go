// Renders a Helm chart's templates with Go's text/template — the engine Helm itself uses — and
// the few Sprig functions Pylon's chart calls (toJson), for checking the chart where no helm
// binary can be installed. Usage:
//
//	go run scripts/helm-template/main.go CHART_DIR VALUES_JSON RELEASE_NAME NAMESPACE
//
// VALUES_JSON holds the merged values (scripts/render-chart.sh makes it from values.yaml). The
// output is what `helm template` prints: each rendered template after a "# Source:" line,
// documents separated by "---"; a template that renders to nothing is left out.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: main.go CHART_DIR VALUES_JSON RELEASE_NAME NAMESPACE")
		os.Exit(2)
	}
	chart, valuesFile, release, namespace := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	raw, err := os.ReadFile(valuesFile)
	check(err)
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.UseNumber()
	var values map[string]interface{}
	check(decoder.Decode(&values))
	context := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm"},
		"Chart":   map[string]interface{}{"Name": filepath.Base(chart)},
	}
	functions := template.FuncMap{
		"toJson": func(value interface{}) (string, error) {
			out, err := json.Marshal(value)
			return string(out), err
		},
	}
	files, err := filepath.Glob(filepath.Join(chart, "templates", "*.yaml"))
	check(err)
	sort.Strings(files)
	var documents []string
	for _, file := range files {
		text, err := os.ReadFile(file)
		check(err)
		name := filepath.Base(chart) + "/templates/" + filepath.Base(file)
		// Helm's default: a missing value renders as nothing rather than failing.
		parsed, err := template.New(name).Option("missingkey=zero").Funcs(functions).Parse(string(text))
		check(err)
		var out bytes.Buffer
		check(parsed.Execute(&out, context))
		if strings.TrimSpace(out.String()) == "" {
			continue
		}
		documents = append(documents, "# Source: "+name+"\n"+strings.TrimLeft(out.String(), "\n"))
	}
	fmt.Print("---\n" + strings.Join(documents, "---\n"))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "helm-template:", err)
		os.Exit(1)
	}
}
