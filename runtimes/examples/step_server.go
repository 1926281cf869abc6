// A step in Go behind HTTP, no SDK (http runtime): the Input is the POST body, the Response the reply.
package main

import (
	"encoding/json"
	"net/http"
)

func main() {
	http.HandleFunc("/step", func(w http.ResponseWriter, r *http.Request) {
		var input struct {
			Event struct {
				Data map[string]any `json:"data"`
			} `json:"event"`
			Ctx struct {
				Attempt int `json:"attempt"`
			} `json:"ctx"`
		}
		if err := json.NewDecoder(r.Body).Decode(&input); err != nil {
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(map[string]any{"status": 400, "body": map[string]string{"error": err.Error()}})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"status": 200, "body": map[string]any{"keys": len(input.Event.Data), "attempt": input.Ctx.Attempt}})
	})
	http.ListenAndServe("127.0.0.1:9000", nil)
}
