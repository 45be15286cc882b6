// jitattn: attention kernels generated per head dim, mask, bias and scale, compiled at run time.
#pragma once

#include "jitattn/attention.h"
#include "jitattn/engine.h"
#include "jitattn/error.h"
#include "jitattn/tensor.h"
