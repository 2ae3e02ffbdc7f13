package runtime

/*
#cgo CXXFLAGS: -std=c++17
#include <stdlib.h>
#include <tensorflow/lite/builtin_ops.h>
#include <tensorflow/lite/c/common.h>

const char* gnl_op_name(int code);

// One entry of the execution plan after delegation: a delegate's kernel
// (replacing `replaced` nodes of the model) or a node TFLite's builtin
// kernels run.
typedef struct {
	int delegated;
	int replaced;
	int builtin_code;
	const char* name; // delegate kernel's or custom op's name; may be NULL
} gnl_step;

typedef struct {
	TfLiteDelegate d;
	gnl_step* steps;
	int n;
	int first_kernel; // node index of the first delegate kernel: the model's node count
	long long macs, builtin_macs;
} gnl_observer;

static long long gnl_dim(TfLiteContext* ctx, TfLiteNode* node, int input, int i) {
	if (input >= node->inputs->size || node->inputs->data[input] < 0) return 0;
	TfLiteIntArray* d = ctx->tensors[node->inputs->data[input]].dims;
	if (i < 0) i += d->size;
	return i >= 0 && i < d->size ? d->data[i] : 0;
}

// gnl_macs counts the multiply-accumulates of one node of the original
// graph: convolutions, transposed convolutions, fully connected layers and
// matrix products (the rest is small next to them).
static long long gnl_macs(TfLiteContext* ctx, TfLiteNode* node, int code) {
	if (node->outputs->size < 1 || node->outputs->data[0] < 0) return 0;
	TfLiteIntArray* od = ctx->tensors[node->outputs->data[0]].dims;
	long long out = 1;
	for (int i = 0; i < od->size; i++) out *= od->data[i];
	switch (code) {
	case kTfLiteBuiltinConv2d: // filter [OC, KH, KW, IC]
		return out * gnl_dim(ctx, node, 1, 1) * gnl_dim(ctx, node, 1, 2) * gnl_dim(ctx, node, 1, 3);
	case kTfLiteBuiltinDepthwiseConv2d: // filter [1, KH, KW, OC]
		return out * gnl_dim(ctx, node, 1, 1) * gnl_dim(ctx, node, 1, 2);
	case kTfLiteBuiltinFullyConnected: // weights [OUT, IN]
		return out * gnl_dim(ctx, node, 1, 1);
	case kTfLiteBuiltinBatchMatmul: // lhs [..., M, K]
		return out * gnl_dim(ctx, node, 0, -1);
	case kTfLiteBuiltinTransposeConv: { // weights [OC, KH, KW, IC], input [N, H, W, IC]
		long long in = gnl_dim(ctx, node, 2, 0) * gnl_dim(ctx, node, 2, 1) * gnl_dim(ctx, node, 2, 2);
		return in * gnl_dim(ctx, node, 1, 0) * gnl_dim(ctx, node, 1, 1) * gnl_dim(ctx, node, 1, 2) * gnl_dim(ctx, node, 1, 3);
	}
	}
	return 0;
}

// gnl_observe is the Prepare of a delegate that replaces nothing: applied
// last, it reads the execution plan the other delegates left.
static TfLiteStatus gnl_observe(TfLiteContext* ctx, TfLiteDelegate* d) {
	gnl_observer* o = (gnl_observer*)d->data_;
	TfLiteIntArray* plan;
	if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk) return kTfLiteError;
	free(o->steps);
	o->steps = calloc(plan->size > 0 ? plan->size : 1, sizeof(gnl_step));
	o->n = 0;
	o->macs = o->builtin_macs = 0;
	o->first_kernel = -1;
	if (!o->steps) return kTfLiteError;
	for (int i = 0; i < plan->size; i++) {
		TfLiteNode* node;
		TfLiteRegistration* reg;
		if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk) return kTfLiteError;
		gnl_step* s = &o->steps[o->n++];
		s->builtin_code = reg->builtin_code;
		s->name = reg->custom_name;
		if (node->delegate == NULL) {
			long long m = gnl_macs(ctx, node, reg->builtin_code);
			o->macs += m;
			o->builtin_macs += m;
			continue;
		}
		s->delegated = 1;
		// Delegate kernels are added after the model's own nodes.
		if (o->first_kernel < 0 || plan->data[i] < o->first_kernel) o->first_kernel = plan->data[i];
		// A delegate kernel's builtin_data is the TfLiteDelegateParams
		// (TfLiteOpaqueDelegateParams for opaque delegates) it was made with;
		// the nodes it replaced stay in the graph, out of the plan.
		TfLiteIntArray* replaced = node->delegate->opaque_delegate_builder != NULL
			? ((TfLiteOpaqueDelegateParams*)node->builtin_data)->nodes_to_replace
			: ((TfLiteDelegateParams*)node->builtin_data)->nodes_to_replace;
		s->replaced = replaced->size;
		for (int j = 0; j < replaced->size; j++) {
			TfLiteNode* orig;
			TfLiteRegistration* oreg;
			if (ctx->GetNodeAndRegistration(ctx, replaced->data[j], &orig, &oreg) == kTfLiteOk) {
				o->macs += gnl_macs(ctx, orig, oreg->builtin_code);
			}
		}
	}
	return kTfLiteOk;
}

static gnl_observer* gnl_observer_new(void) {
	gnl_observer* o = calloc(1, sizeof(gnl_observer));
	if (!o) return NULL;
	o->d = TfLiteDelegateCreate();
	o->d.data_ = o;
	o->d.Prepare = gnl_observe;
	o->d.flags = kTfLiteDelegateFlagsAllowDynamicTensors;
	return o;
}

static void gnl_observer_free(gnl_observer* o) {
	free(o->steps);
	free(o);
}
*/
import "C"

import (
	"fmt"
	"sort"
	"strings"
	"unsafe"
)

// Placement says where a model's operators run once the delegates are
// applied: how many nodes each delegate took, in how many partitions, and
// which operators stayed on TFLite's builtin kernels; and how much work one
// Invoke is.
type Placement struct {
	Nodes       int             `json:"nodes"`
	MACs        int64           `json:"macs"`         // multiply-accumulates per Invoke (conv, FC, matmul)
	BuiltinMACs int64           `json:"builtin_macs"` // of those, on TFLite's builtin kernels
	Delegates   []DelegateShare `json:"delegates"`
	Builtin     []OpCount       `json:"builtin"`
}

// DelegateShare is one delegate's part of the model. Nodes is TFLite's own
// count, the nodes its kernels replaced (TfLiteDelegateParams); the GPU
// delegate's can be lower than the nodes its partition covers (measured: 30
// on the 79-node tiny bundle, which it runs whole).
type DelegateShare struct {
	Name       string `json:"name"`
	Nodes      int    `json:"nodes"`
	Partitions int    `json:"partitions"`
}

// OpCount is an operator and how many of its nodes run on builtin kernels.
type OpCount struct {
	Op    string `json:"op"`
	Nodes int    `json:"nodes"`
}

// BuiltinNodes is the number of nodes left to TFLite's builtin kernels.
func (p Placement) BuiltinNodes() int {
	n := 0
	for _, o := range p.Builtin {
		n += o.Nodes
	}
	return n
}

// String is one line: "xnnpack 62/64 nodes (2 partitions); builtin 2: MEAN 2".
func (p Placement) String() string {
	var parts []string
	for _, d := range p.Delegates {
		parts = append(parts, fmt.Sprintf("%s %d/%d nodes (%d partitions)", d.Name, d.Nodes, p.Nodes, d.Partitions))
	}
	b := fmt.Sprintf("builtin kernels %d/%d nodes", p.BuiltinNodes(), p.Nodes)
	if len(p.Builtin) > 0 {
		ops := make([]string, len(p.Builtin))
		for i, o := range p.Builtin {
			ops[i] = fmt.Sprintf("%s %d", o.Op, o.Nodes)
		}
		b += ": " + strings.Join(ops, ", ")
	}
	return strings.Join(append(parts, b), "; ")
}

// observer is a delegate that takes no node. Applied after the real ones,
// it records the execution plan they left, through TFLite's public
// delegate interface (so it works with any TFLite 2.x C library).
type observer struct{ o *C.gnl_observer }

func newObserver() *observer {
	o := C.gnl_observer_new()
	if o == nil {
		return nil
	}
	return &observer{o: o}
}

func (o *observer) Delete()             { C.gnl_observer_free(o.o) }
func (o *observer) Ptr() unsafe.Pointer { return unsafe.Pointer(&o.o.d) }

// placement reads what the observer saw.
func (o *observer) placement() Placement {
	p := Placement{MACs: int64(o.o.macs), BuiltinMACs: int64(o.o.builtin_macs)}
	steps := unsafe.Slice(o.o.steps, int(o.o.n))
	share := map[string]int{} // index in p.Delegates
	ops := map[string]int{}
	for _, s := range steps {
		if s.delegated != 0 {
			name := delegateName(C.GoString(s.name))
			i, ok := share[name]
			if !ok {
				i = len(p.Delegates)
				share[name] = i
				p.Delegates = append(p.Delegates, DelegateShare{Name: name})
			}
			p.Delegates[i].Nodes += int(s.replaced)
			p.Delegates[i].Partitions++
			continue
		}
		op := C.GoString(C.gnl_op_name(s.builtin_code))
		if s.name != nil {
			op = C.GoString(s.name) // a custom op
		}
		if op == "" {
			op = fmt.Sprintf("op#%d", int(s.builtin_code))
		}
		ops[op]++
		p.Nodes++
	}
	if o.o.first_kernel >= 0 {
		p.Nodes = int(o.o.first_kernel)
	}
	for op, n := range ops {
		p.Builtin = append(p.Builtin, OpCount{Op: op, Nodes: n})
	}
	sort.Slice(p.Builtin, func(i, j int) bool {
		a, b := p.Builtin[i], p.Builtin[j]
		return a.Nodes > b.Nodes || a.Nodes == b.Nodes && a.Op < b.Op
	})
	return p
}

// delegateName is gnld's name for a delegate kernel's TFLite name.
func delegateName(kernel string) string {
	switch kernel {
	case "TfLiteXNNPackDelegate":
		return XNNPACK
	case "TfLiteGpuDelegateV2":
		return GPU
	case "":
		return "external"
	}
	return kernel
}
