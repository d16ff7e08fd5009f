// qcompile aarch64 TVM RPC server: the handshake of `tvm.rpc.server` (Python) on a TCP socket, then the
// runtime's own server loop (`rpc.ServerLoop`, registered by libtvm_runtime). Run under qemu-aarch64 it is an
// emulated aarch64 "board" for tests of the RPC tuning path; its timings are emulation, not ARM latency.
// usage: rpc_server HOST PORT WORKDIR [--emulated]   (PORT 0: any free port; uploads go to WORKDIR)
//   Prints "listening PORT" once bound. Serves one session at a time, each in a forked child, so a kernel that
//   crashes ends its session, not the server. Handshake (tvm/rpc/server.py, _listen_loop): the client sends
//   [RPC_MAGIC i32, keylen i32, "client:KEY [-timeout=S]"], the server answers [RPC_CODE_SUCCESS i32, keylen i32,
//   "server:KEY"]. Any client key is accepted; `-timeout=S` ends the session after S seconds (alarm).
//   `--emulated` (qcompile.backends.tvm.qemu passes it) registers `qcompile.rpc.server.emulated`, so clients know
//   that what they time here is emulation.
// Built on demand by qcompile.backends.tvm.qemu (aarch64-linux-gnu-g++ against the tvm-ffi headers).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

namespace ffi = tvm::ffi;

static constexpr int32_t kRPCMagic = 0xFF271;  // tvm.rpc.base.RPC_MAGIC
static constexpr int32_t kRPCSuccess = kRPCMagic + 0;

static bool RecvAll(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

static bool SendAll(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = send(fd, p, n, 0);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The handshake; returns the session timeout in seconds (0: none), or -1 to drop the connection.
static int Handshake(int fd) {
  int32_t magic = 0, len = 0;
  if (!RecvAll(fd, &magic, 4) || magic != kRPCMagic) return -1;
  if (!RecvAll(fd, &len, 4) || len < 0 || len > 4096) return -1;
  std::string key(static_cast<size_t>(len), '\0');
  if (!RecvAll(fd, key.data(), key.size()) || key.rfind("client:", 0) != 0) return -1;
  std::string server_key = "server:";
  int32_t slen = static_cast<int32_t>(server_key.size());
  if (!SendAll(fd, &kRPCSuccess, 4) || !SendAll(fd, &slen, 4) || !SendAll(fd, server_key.data(), server_key.size()))
    return -1;
  size_t t = key.find("-timeout=");
  return t == std::string::npos ? 0 : std::atoi(key.c_str() + t + 9);
}

// The server-side globals that TVM's Python server registers (`_server_env`): the work directory of uploads and
// loading an uploaded library.
static void RegisterServerEnv(const std::string& workdir, bool emulated) {
  if (emulated)
    ffi::Function::SetGlobal("qcompile.rpc.server.emulated",
                             ffi::Function::FromTyped([]() { return std::string("qemu-aarch64"); }), true);
  ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      ffi::Function::FromTyped([workdir](std::string path) { return workdir + "/" + path; }), true);
  ffi::Function::SetGlobal(
      "tvm.rpc.server.load_module",
      ffi::Function::FromTyped([workdir](std::string name) {
        std::string path = name.find('/') == std::string::npos ? workdir + "/" + name : name;
        return ffi::Module::LoadFromFile(path);
      }),
      true);
}

int main(int argc, char** argv) {
  bool emulated = argc == 5 && std::string(argv[4]) == "--emulated";
  if (argc != 4 && !emulated) {
    std::cerr << "usage: " << argv[0] << " HOST PORT WORKDIR [--emulated]\n";
    return 2;
  }
  const std::string workdir = argv[3];
  ffi::Function loop = ffi::Function::GetGlobalRequired("rpc.ServerLoop");

  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[2])));
  if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
    std::cerr << "bad IPv4 address " << argv[1] << "\n";
    return 2;
  }
  if (bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(ls, 8) != 0) {
    std::perror("bind/listen");
    return 1;
  }
  socklen_t alen = sizeof(addr);
  getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &alen);
  std::cout << "listening " << ntohs(addr.sin_port) << std::endl;

  for (;;) {
    int conn = accept(ls, nullptr, nullptr);
    if (conn < 0) continue;
    int timeout = Handshake(conn);
    if (timeout < 0) {
      close(conn);
      continue;
    }
    pid_t pid = fork();
    if (pid == 0) {  // the session
      close(ls);
      if (timeout > 0) alarm(static_cast<unsigned>(timeout));
      try {
        RegisterServerEnv(workdir, emulated);
        loop(conn);
      } catch (const std::exception& e) {
        std::cerr << "rpc session error: " << e.what() << "\n";
        _exit(1);
      }
      _exit(0);
    }
    close(conn);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
      std::cerr << "rpc session ended abnormally (status " << status << ")\n";
  }
}
