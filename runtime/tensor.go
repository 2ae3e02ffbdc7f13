package runtime

import (
	"fmt"

	tflite "github.com/mattn/go-tflite"
)

// DType is a tensor's element type as model.json spells it.
type DType string

// The element types gnld models use.
const (
	Float32 DType = "float32"
	Int8    DType = "int8"
	Uint8   DType = "uint8"
)

// Quantization maps stored integers q to real values: (q - ZeroPoint) * Scale.
// Scale is 0 for float tensors.
type Quantization struct {
	Scale     float32
	ZeroPoint int32
}

// TensorInfo describes an input or output tensor.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int
	Quant Quantization
}

// Tensor is an input or output of an Interpreter. Its typed views alias
// TFLite's own buffer (zero copy): they stay valid until the Interpreter is
// closed, and an output view changes on every Invoke.
type Tensor struct {
	info TensorInfo
	f32  []float32
	i8   []int8
	u8   []uint8
}

func newTensor(t *tflite.Tensor) (*Tensor, error) {
	if t == nil {
		return nil, fmt.Errorf("tensor missing")
	}
	q := t.QuantizationParams()
	x := &Tensor{info: TensorInfo{
		Name:  t.Name(),
		Shape: t.Shape(),
		Quant: Quantization{Scale: float32(q.Scale), ZeroPoint: int32(q.ZeroPoint)},
	}}
	n := 1
	for _, d := range x.info.Shape {
		n *= d
	}
	size := 1
	switch t.Type() {
	case tflite.Float32:
		x.info.DType, x.f32, size = Float32, t.Float32s(), 4
	case tflite.Int8:
		x.info.DType, x.i8 = Int8, t.Int8s()
	case tflite.UInt8:
		x.info.DType, x.u8 = Uint8, t.UInt8s()
	default:
		return nil, fmt.Errorf("tensor %q has type %v, want float32, int8 or uint8", x.info.Name, t.Type())
	}
	if int(t.ByteSize()) != n*size || t.Data() == nil {
		return nil, fmt.Errorf("tensor %q: %d bytes for shape %v (not allocated?)", x.info.Name, t.ByteSize(), x.info.Shape)
	}
	if x.info.DType != Float32 && x.info.Quant.Scale == 0 {
		return nil, fmt.Errorf("tensor %q is %s without quantization parameters", x.info.Name, x.info.DType)
	}
	return x, nil
}

// Info describes the tensor.
func (t *Tensor) Info() TensorInfo { return t.info }

// Float32s is the tensor's buffer if it is float32, else nil.
func (t *Tensor) Float32s() []float32 { return t.f32 }

// Int8s is the tensor's buffer if it is int8, else nil.
func (t *Tensor) Int8s() []int8 { return t.i8 }

// Uint8s is the tensor's buffer if it is uint8, else nil.
func (t *Tensor) Uint8s() []uint8 { return t.u8 }
