package handlers

import (
	"net/http"
	"strings"
)

// routeUnmatched is the route logged for a request that matched none.
const routeUnmatched = "unmatched"

// router is a ServeMux with two additions.
//
// It knows its patterns, so that a log names the route a request took and
// never its path or query: those may hold a token pasted by mistake, or a
// user's key.
//
// It serves subtrees whose paths are opaque (the key-value API) without
// the mux: ServeMux cleans every path and redirects /kv/a//b to /kv/a/b
// and /kv/a/../b to /kv/b, which would make one key name another. Under
// such a prefix, the rest of the decoded path is the value of the {key}
// wildcard, byte for byte.
type router struct {
	mux      *http.ServeMux
	patterns map[string]bool
	trees    []tree
}

// tree is a subtree served by method, with the path after prefix as the
// value of the wildcard name.
type tree struct {
	prefix, name string
	byMethod     map[string]http.Handler
	allow        string // the Allow header of a 405
}

func newRouter() *router {
	return &router{mux: http.NewServeMux(), patterns: map[string]bool{}}
}

// handle registers h for a ServeMux pattern.
func (rt *router) handle(pattern string, h http.Handler) {
	rt.mux.Handle(pattern, h)
	rt.patterns[pattern] = true
}

// handleTree serves every path under prefix (which ends in /) with the
// handler of the request's method; the rest of the path is the value of
// the wildcard name. A GET handler also serves HEAD.
func (rt *router) handleTree(prefix, name string, byMethod map[string]http.Handler) {
	if h, ok := byMethod["GET"]; ok && byMethod["HEAD"] == nil {
		byMethod["HEAD"] = h
	}
	var methods []string
	for _, m := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"} {
		if byMethod[m] != nil {
			methods = append(methods, m)
			rt.patterns[treePattern(m, prefix, name)] = true
		}
	}
	rt.trees = append(rt.trees, tree{prefix: prefix, name: name, byMethod: byMethod, allow: strings.Join(methods, ", ")})
}

// treePattern is the route logged for a request served by a tree.
func treePattern(method, prefix, name string) string {
	return method + " " + prefix + "{" + name + "...}"
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for _, t := range rt.trees {
		rest, ok := strings.CutPrefix(r.URL.Path, t.prefix)
		if !ok {
			continue
		}
		h := t.byMethod[r.Method]
		if h == nil {
			w.Header().Set("Allow", t.allow)
			writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed here; use "+t.allow)
			return
		}
		r.Pattern = treePattern(r.Method, t.prefix, t.name)
		r.SetPathValue(t.name, rest)
		h.ServeHTTP(w, r)
		return
	}
	rt.mux.ServeHTTP(w, r)
}

// route returns the pattern r matches, or routeUnmatched. It serves
// nothing.
func (rt *router) route(r *http.Request) string {
	for _, t := range rt.trees {
		if strings.HasPrefix(r.URL.Path, t.prefix) {
			if t.byMethod[r.Method] == nil {
				return routeUnmatched
			}
			return treePattern(r.Method, t.prefix, t.name)
		}
	}
	// For a CONNECT request, or a redirect, the mux may answer a path
	// rather than a pattern: only a registered pattern is returned.
	if _, p := rt.mux.Handler(r); rt.patterns[p] {
		return p
	}
	return routeUnmatched
}

// served returns the route that served r, once the router has: the
// pattern set on r, if it is one of the router's.
func (rt *router) served(r *http.Request) string {
	if rt.patterns[r.Pattern] {
		return r.Pattern
	}
	return routeUnmatched
}
