// The DLPack exchange structures (the unversioned `DLManagedTensor` ABI that every framework
// speaks: numpy, torch, CuPy, JAX, ONNX Runtime), written from the DLPack specification
// (dmlc/dlpack: include/dlpack/dlpack.h, ABI of v0.8). A capsule named "dltensor" holds a
// DLManagedTensor*; the consumer renames it "used_dltensor" and calls `deleter` when done.
#pragma once

#include <cstdint>

namespace ig3d::dlpack {

enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4 };

struct Device {
  int32_t device_type;
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means C-contiguous
  uint64_t byte_offset;
};

struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

}  // namespace ig3d::dlpack
