{
  "targets": [
    {
      "target_name": "migbridge_uring",
      "sources": ["native/uring/addon.cc", "native/uring/sys.cc", "native/uring/socket.cc", "native/uring/fdpass.cc", "native/uring/engine.cc", "native/uring/uring_backend.cc", "native/uring/pool_backend.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "<!@(pkg-config --cflags liburing)"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
      "libraries": ["<!@(pkg-config --libs liburing)", "-lpthread"]
    }
  ]
}
