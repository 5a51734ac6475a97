// Communicator base (the interface's out-of-line anchor).
#include "comm/communicator.hpp"
