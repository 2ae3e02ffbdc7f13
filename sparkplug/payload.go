package sparkplug

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// DataType is a Sparkplug B metric data type (the DataType enum of
// Eclipse Tahu's sparkplug_b.proto). Only the scalar types gnld uses have
// an encoder; the decoder reads any scalar.
type DataType uint32

// The data types of the specification's DataType enum that gnld uses or
// decodes.
const (
	Unknown  DataType = 0
	Int8     DataType = 1
	Int16    DataType = 2
	Int32    DataType = 3
	Int64    DataType = 4
	UInt8    DataType = 5
	UInt16   DataType = 6
	UInt32   DataType = 7
	UInt64   DataType = 8
	Float    DataType = 9
	Double   DataType = 10
	Boolean  DataType = 11
	String   DataType = 12
	DateTime DataType = 13
	Text     DataType = 14
)

// Field numbers of sparkplug_b.proto (proto2). Payload:
//
//	optional uint64 timestamp = 1; repeated Metric metrics = 2;
//	optional uint64 seq = 3; optional string uuid = 4; optional bytes body = 5;
//
// Payload.Metric:
//
//	optional string name = 1; optional uint64 alias = 2;
//	optional uint64 timestamp = 3; optional uint32 datatype = 4;
//	optional bool is_historical = 5; optional bool is_transient = 6;
//	optional bool is_null = 7; (metadata = 8, properties = 9)
//	oneof value { uint32 int_value = 10; uint64 long_value = 11;
//	  float float_value = 12; double double_value = 13;
//	  bool boolean_value = 14; string string_value = 15;
//	  bytes bytes_value = 16; (dataset 17, template 18, extension 19) }
const (
	fPayloadTimestamp protowire.Number = 1
	fPayloadMetrics   protowire.Number = 2
	fPayloadSeq       protowire.Number = 3

	fMetricName      protowire.Number = 1
	fMetricAlias     protowire.Number = 2
	fMetricTimestamp protowire.Number = 3
	fMetricDatatype  protowire.Number = 4
	fMetricIsNull    protowire.Number = 7
	fMetricInt       protowire.Number = 10
	fMetricLong      protowire.Number = 11
	fMetricFloat     protowire.Number = 12
	fMetricDouble    protowire.Number = 13
	fMetricBool      protowire.Number = 14
	fMetricString    protowire.Number = 15
	fMetricBytes     protowire.Number = 16
)

// Metric is one Sparkplug B metric. The value is in the field its Type
// uses: Int64, UInt64 and DateTime in Long (Int64 as two's complement),
// the 8- to 32-bit integers in Long too (sent as int_value), Float and
// Double in Double, Boolean in Bool, String and Text in String. Null sends
// is_null and no value.
type Metric struct {
	Name      string
	Alias     uint64 // decoded only; gnld sends names, no aliases
	Timestamp uint64 // ms since the epoch, UTC
	Type      DataType
	Null      bool

	Long   uint64
	Double float64
	Bool   bool
	String string

	// Decoded only: which value field was present (0: none).
	ValueField protowire.Number
}

// Payload is a Sparkplug B payload. Seq is left out when HasSeq is false
// (NDEATH, NCMD).
type Payload struct {
	Timestamp uint64 // ms since the epoch, UTC
	Metrics   []Metric
	Seq       uint64
	HasSeq    bool
}

// Marshal encodes p. With types false the metrics' datatype fields are
// left out, as the specification advises for DATA and CMD messages (a
// host takes each metric's type from the birth); births need types true.
func (p *Payload) Marshal(types bool) ([]byte, error) {
	var b []byte
	b = protowire.AppendTag(b, fPayloadTimestamp, protowire.VarintType)
	b = protowire.AppendVarint(b, p.Timestamp)
	for i := range p.Metrics {
		m, err := p.Metrics[i].marshal(types)
		if err != nil {
			return nil, err
		}
		b = protowire.AppendTag(b, fPayloadMetrics, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	if p.HasSeq {
		b = protowire.AppendTag(b, fPayloadSeq, protowire.VarintType)
		b = protowire.AppendVarint(b, p.Seq)
	}
	return b, nil
}

func (m *Metric) marshal(types bool) ([]byte, error) {
	var b []byte
	if m.Name == "" {
		return nil, errors.New("sparkplug: metric without a name")
	}
	b = protowire.AppendTag(b, fMetricName, protowire.BytesType)
	b = protowire.AppendString(b, m.Name)
	b = protowire.AppendTag(b, fMetricTimestamp, protowire.VarintType)
	b = protowire.AppendVarint(b, m.Timestamp)
	if types {
		b = protowire.AppendTag(b, fMetricDatatype, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(m.Type))
	}
	if m.Null {
		b = protowire.AppendTag(b, fMetricIsNull, protowire.VarintType)
		return protowire.AppendVarint(b, 1), nil
	}
	switch m.Type {
	case Int8, Int16, Int32, UInt8, UInt16, UInt32:
		b = protowire.AppendTag(b, fMetricInt, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(uint32(m.Long)))
	case Int64, UInt64, DateTime:
		b = protowire.AppendTag(b, fMetricLong, protowire.VarintType)
		b = protowire.AppendVarint(b, m.Long)
	case Float:
		b = protowire.AppendTag(b, fMetricFloat, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(float32(m.Double)))
	case Double:
		b = protowire.AppendTag(b, fMetricDouble, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(m.Double))
	case Boolean:
		b = protowire.AppendTag(b, fMetricBool, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(m.Bool))
	case String, Text:
		b = protowire.AppendTag(b, fMetricString, protowire.BytesType)
		b = protowire.AppendString(b, m.String)
	default:
		return nil, fmt.Errorf("sparkplug: metric %s: data type %d not supported", m.Name, m.Type)
	}
	return b, nil
}

// Unmarshal decodes a Sparkplug B payload: the timestamp, seq and the
// metrics' name, alias, timestamp, datatype, is_null and scalar value.
// Other fields (uuid, body, metadata, properties, datasets, templates)
// are skipped.
func Unmarshal(b []byte) (Payload, error) {
	var p Payload
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error {
		switch {
		case num == fPayloadTimestamp && typ == protowire.VarintType:
			p.Timestamp = v
		case num == fPayloadSeq && typ == protowire.VarintType:
			p.Seq, p.HasSeq = v, true
		case num == fPayloadMetrics && typ == protowire.BytesType:
			m, err := unmarshalMetric(bs)
			if err != nil {
				return err
			}
			p.Metrics = append(p.Metrics, m)
		}
		return nil
	})
	return p, err
}

func unmarshalMetric(b []byte) (Metric, error) {
	var m Metric
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error {
		switch {
		case num == fMetricName && typ == protowire.BytesType:
			m.Name = string(bs)
		case num == fMetricAlias && typ == protowire.VarintType:
			m.Alias = v
		case num == fMetricTimestamp && typ == protowire.VarintType:
			m.Timestamp = v
		case num == fMetricDatatype && typ == protowire.VarintType:
			m.Type = DataType(uint32(v))
		case num == fMetricIsNull && typ == protowire.VarintType:
			m.Null = v != 0
		case (num == fMetricInt || num == fMetricLong) && typ == protowire.VarintType:
			m.Long, m.ValueField = v, num
		case num == fMetricFloat && typ == protowire.Fixed32Type:
			m.Double, m.ValueField = float64(math.Float32frombits(uint32(v))), num
		case num == fMetricDouble && typ == protowire.Fixed64Type:
			m.Double, m.ValueField = math.Float64frombits(v), num
		case num == fMetricBool && typ == protowire.VarintType:
			m.Bool, m.ValueField = v != 0, num
		case (num == fMetricString || num == fMetricBytes) && typ == protowire.BytesType:
			m.String, m.ValueField = string(bs), num
		}
		return nil
	})
	return m, err
}

// fields walks the fields of one protobuf message: varints and fixed
// values in v, length-delimited ones in bs; groups are skipped.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("sparkplug payload: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var v uint64
		var bs []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x uint32
			x, n = protowire.ConsumeFixed32(b)
			v = uint64(x)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			bs, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("sparkplug payload: field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, typ, v, bs); err != nil {
			return err
		}
	}
	return nil
}
