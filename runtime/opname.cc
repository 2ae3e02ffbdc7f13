// The name of a TFLite builtin operator, from TFLite's own schema.
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" const char* gnl_op_name(int code) {
  if (code < tflite::BuiltinOperator_MIN || code > tflite::BuiltinOperator_MAX) return "";
  return tflite::EnumNameBuiltinOperator(static_cast<tflite::BuiltinOperator>(code));
}
