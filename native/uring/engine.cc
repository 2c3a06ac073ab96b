// placeholder replaced below
#include "addon.h"
namespace migbridge { void InitEngine(Napi::Env, Napi::Object) {} }
