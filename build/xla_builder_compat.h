// Compatibility header for building Horovod 0.28.1 against TensorFlow >= 2.18.
//
// The Makefile installs this file as tensorflow/compiler/xla/client/xla_builder.h in an
// include folder on CPATH, and only when TensorFlow no longer ships that path (on older
// TensorFlow it would shadow the real header). Horovod's horovod/tensorflow/xla_mpi_ops.cc
// is the only file that includes it, so these definitions reach nothing else:
//  - the builder header moved to xla/hlo/builder/xla_builder.h;
//  - xla::StatusOr was removed from XLA in favour of absl::StatusOr; the GPU section of
//    xla_mpi_ops.cc still names it;
//  - GPU builds: horovod/tensorflow/mpi_ops.cc declares
//    stream_executor::gpu::AsGpuStreamValue and expects TensorFlow to export it, which
//    TensorFlow >= 2.18 no longer does (the library links, then fails to load with an
//    undefined symbol). It is defined here, once, inside Horovod's own library.
#pragma once
#include "xla/hlo/builder/xla_builder.h"
#include "absl/status/statusor.h"

namespace xla {
template <typename T>
using StatusOr = absl::StatusOr<T>;
}  // namespace xla

#if HAVE_CUDA
#include <cuda_runtime.h>
#include "xla/stream_executor/stream.h"
namespace stream_executor {
namespace gpu {
cudaStream_t AsGpuStreamValue(Stream* stream) {
  return static_cast<cudaStream_t>(stream->platform_specific_handle().stream);
}
}  // namespace gpu
}  // namespace stream_executor
#endif
