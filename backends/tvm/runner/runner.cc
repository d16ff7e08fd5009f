// qcompile aarch64 runner: loads a Relax VM library exported by qcompile.backends.tvm and runs main.
// usage: runner LIB IN.bin DTYPE SHAPE OUT.bin REPEAT
//   SHAPE is comma separated (1,3,32,32); REPEAT >= 1 runs main that many times (first run excluded
//   from the timings). Prints one JSON line: output dtype, shape and the per-run wall times in ms.
// Built on demand by qcompile.backends.tvm.qemu (aarch64-linux-gnu-g++ against the tvm-ffi headers).
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n == 0 ? 64 : n);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

static std::string DtypeStr(DLDataType t) {
  const char* code = t.code == kDLInt ? "int" : t.code == kDLUInt ? "uint" : t.code == kDLFloat ? "float" : "other";
  return std::string(code) + std::to_string(t.bits);
}

int main(int argc, char** argv) {
  if (argc != 7) {
    std::cerr << "usage: " << argv[0] << " LIB IN.bin DTYPE SHAPE OUT.bin REPEAT\n";
    return 2;
  }
  try {
    std::vector<int64_t> shape;
    std::stringstream ss(argv[4]);
    for (std::string tok; std::getline(ss, tok, ',');) shape.push_back(std::stoll(tok));
    int repeat = std::atoi(argv[6]);
    DLDevice cpu{kDLCPU, 0};

    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // one CPU device, pooled allocator (2), as relax.VirtualMachine does
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function main_fn = vm->GetFunction("main").value();

    ffi::Tensor x = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                             ffi::StringToDLDataType(argv[3]), cpu);
    size_t nbytes = ffi::GetDataSize(*x.GetDLTensorPtr());
    std::ifstream in(argv[2], std::ios::binary);
    in.read(static_cast<char*>(x.data_ptr()), static_cast<std::streamsize>(nbytes));
    if (static_cast<size_t>(in.gcount()) != nbytes) {
      std::cerr << "input file holds " << in.gcount() << " bytes, expected " << nbytes << "\n";
      return 3;
    }
    ffi::Tensor y;
    std::vector<double> ms;
    for (int r = 0; r < std::max(repeat, 1) + (repeat > 1 ? 1 : 0); ++r) {
      auto t0 = std::chrono::steady_clock::now();
      y = main_fn(x).cast<ffi::Tensor>();
      auto t1 = std::chrono::steady_clock::now();
      if (repeat > 1 && r == 0) continue;  // warm-up
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    const DLTensor* yt = y.GetDLTensorPtr();
    std::ofstream out(argv[5], std::ios::binary);
    out.write(static_cast<const char*>(yt->data), static_cast<std::streamsize>(ffi::GetDataSize(*yt)));
    std::cout << "{\"dtype\": \"" << DtypeStr(yt->dtype) << "\", \"shape\": [";
    for (int i = 0; i < yt->ndim; ++i) std::cout << (i ? ", " : "") << yt->shape[i];
    std::cout << "], \"ms\": [";
    for (size_t i = 0; i < ms.size(); ++i) std::cout << (i ? ", " : "") << ms[i];
    std::cout << "]}" << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "runner error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
