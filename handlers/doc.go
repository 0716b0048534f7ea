// Package handlers holds the HTTP handlers of the reference server: the
// application API, health and readiness, and the operator's control API.
//
// Handlers are built from plain dependencies passed in. The process
// lifecycle is seen only through the small interfaces declared here
// (Lifecycle, Controller), never through package upgrade, so the handlers
// can be tested without a process to upgrade. All routes are registered in
// routes.go.
package handlers
