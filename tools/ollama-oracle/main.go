// Command ollama-oracle prints what Ollama v0.24.0's own code computes from a GGUF header, so the capacity
// model can be checked against Ollama rather than against itself.
//
// It reads one JSON request per line on stdin:
//
//	{"path": "model.gguf", "num_ctx": 8192, "num_parallel": 4, "kv_cache_type": "q8_0", "flash_attention": true}
//
// and writes one JSON answer per line. Every figure comes from github.com/ollama/ollama at the tag pinned
// in go.mod: fs/ggml (Decode, GraphSize, GroupLayers, the flash-attention and KV-cache checks) and ml
// (MinimumMemory). The few steps around them that live in unexported code of package llm
// (NewLlamaServer's settings, llamaServer.Load's layer list and graph fallback) are repeated here line for
// line, with their location, because an outside module cannot call them.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/ollama/ollama/fs/ggml"
	"github.com/ollama/ollama/ml"
)

type request struct {
	Path           string `json:"path"`
	NumCtx         int    `json:"num_ctx"`
	NumParallel    int    `json:"num_parallel"`
	KvCacheType    string `json:"kv_cache_type"`
	FlashAttention bool   `json:"flash_attention"`
}

type answer struct {
	Path                   string   `json:"path"`
	Error                  string   `json:"error,omitempty"`
	Architecture           string   `json:"architecture"`
	OllamaEngineRequired   bool     `json:"ollama_engine_required"`
	SupportsFlashAttention bool     `json:"supports_flash_attention"`
	Embedding              bool     `json:"embedding"`
	NumCtx                 uint64   `json:"num_ctx"`
	NumParallel            int      `json:"num_parallel"`
	Batch                  uint64   `json:"batch"`
	FlashAttention         bool     `json:"flash_attention"`
	KvCacheType            string   `json:"kv_cache_type"`
	KV                     []uint64 `json:"kv"`
	KVTotal                uint64   `json:"kv_total"`
	GraphPartial           uint64   `json:"graph_partial"`
	GraphFull              uint64   `json:"graph_full"`
	Layers                 []uint64 `json:"layers"`
	Block0                 uint64   `json:"block0"`
	OutputLayer            uint64   `json:"output_layer"`
	MinimumMemory          uint64   `json:"minimum_memory"`
}

func main() {
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	cache := map[string]*ggml.GGML{}
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" {
			continue
		}
		var req request
		if err := json.Unmarshal([]byte(line), &req); err != nil {
			fmt.Fprintln(os.Stderr, "bad request:", err)
			os.Exit(2)
		}
		if err := out.Encode(evaluate(req, cache)); err != nil {
			os.Exit(1)
		}
	}
}

func load(path string, cache map[string]*ggml.GGML) (*ggml.GGML, error) {
	if f, ok := cache[path]; ok {
		return f, nil
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	// The scheduler decodes with arrays up to 1024 elements collected (server/sched.go, llm.LoadModel).
	f, err := ggml.Decode(file, 1024)
	if err != nil {
		return nil, err
	}
	cache[path] = f
	return f, nil
}

func evaluate(req request, cache map[string]*ggml.GGML) answer {
	a := answer{Path: req.Path}
	f, err := load(req.Path, cache)
	if err != nil {
		a.Error = err.Error()
		return a
	}
	kv := f.KV()
	a.Architecture = kv.Architecture()
	a.OllamaEngineRequired = kv.OllamaEngineRequired()
	a.SupportsFlashAttention = f.SupportsFlashAttention()
	_, a.Embedding = kv[fmt.Sprintf("%s.pooling_type", kv.Architecture())]

	// server/sched.go:414-417: embedding models (no completion capability) load with one slot.
	numParallel := max(req.NumParallel, 1)
	if a.Embedding {
		numParallel = 1
	}
	a.NumParallel = numParallel

	// llm/server.go:167-173: clamp to the trained context; batch = min(num_batch 512, num_ctx).
	numCtx := uint64(req.NumCtx)
	if train := kv.ContextLength(); numCtx > train && train > 0 {
		numCtx = train
	}
	a.NumCtx = numCtx
	batch := min(uint64(512), numCtx)

	// llm/server.go:195-271 with OLLAMA_FLASH_ATTENTION set explicitly (the nodes always set it).
	fa := req.FlashAttention
	if fa && !f.SupportsFlashAttention() {
		fa = false
	}
	flashAttention := ml.FlashAttentionDisabled
	if fa {
		flashAttention = ml.FlashAttentionEnabled
	}
	kvct := strings.ToLower(req.KvCacheType)
	cacheType := ""
	if a.OllamaEngineRequired {
		if fa && f.SupportsKVCacheType(kvct) {
			cacheType = kvct
		}
	} else if kvct != "" {
		if f.KVCacheTypeIsQuantized(kvct) {
			if flashAttention == ml.FlashAttentionEnabled && f.SupportsKVCacheType(kvct) {
				cacheType = kvct
			}
		} else if f.SupportsKVCacheType(kvct) {
			cacheType = kvct
		}
	}
	a.FlashAttention = fa
	a.KvCacheType = cacheType
	if a.KvCacheType == "" {
		a.KvCacheType = "f16"
	}

	// llm/server.go:551-555: an embedding model on the llama.cpp runner gets batch = num_ctx.
	if a.Embedding && !a.OllamaEngineRequired && batch < numCtx {
		batch = numCtx
	}
	a.Batch = batch

	kvLayers, partial, full := f.GraphSize(numCtx, batch, numParallel, cacheType, flashAttention)
	a.KV = kvLayers
	for _, size := range kvLayers {
		a.KVTotal += size
	}
	// llm/server.go:631-643: fallbacks for architectures without a GraphSize formula.
	if partial == 0 {
		headsKV := kv.HeadCountKVMin()
		if headsKV == 0 {
			headsKV = 1
		}
		partial = kv.HeadCountMax() / headsKV * a.KVTotal / 6
	}
	if full == 0 {
		full = partial
	}
	a.GraphPartial, a.GraphFull = partial, full

	// llm/server.go:559-593: one entry per block (its tensors + its KV), then the output layer.
	layers := f.Tensors().GroupLayers()
	if blk0, ok := layers["blk.0"]; ok {
		a.Block0 = blk0.Size()
	}
	for i := range kv.BlockCount() {
		var size uint64
		if blk, ok := layers[fmt.Sprintf("blk.%d", i)]; ok {
			size = blk.Size() + kvLayers[i]
		}
		a.Layers = append(a.Layers, size)
	}
	var output uint64
	if layer, ok := layers["output_norm"]; ok {
		output += layer.Size()
	}
	if layer, ok := layers["output"]; ok {
		output += layer.Size()
	} else if layer, ok := layers["token_embd"]; ok {
		output += layer.Size()
	}
	a.OutputLayer = output
	a.Layers = append(a.Layers, output)

	a.MinimumMemory = ml.DeviceInfo{DeviceID: ml.DeviceID{Library: "CUDA"}}.MinimumMemory()
	return a
}
