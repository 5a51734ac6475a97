# Runs the mpi test binary in a fault scenario under mpirun and checks that the job fails
# (non-zero exit) within the time limit, without hanging, and, for a silent rank, that the
# waiting rank named the operation, step and peer it waited for.
# Inputs: MPIEXEC, MPIFLAGS (;-list), EXE, FAULT (silent|die), LIMIT (seconds).
set(ENV{LONGATTN_MPI_FAULT} ${FAULT})
set(ENV{LONGATTN_COMM_TIMEOUT} 3)
string(TIMESTAMP t0 "%s")
execute_process(COMMAND ${MPIEXEC} ${MPIFLAGS} -np 2 ${EXE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT ${LIMIT})
string(TIMESTAMP t1 "%s")
math(EXPR elapsed "${t1} - ${t0}")
message("fault ${FAULT}: exit '${rc}' after ${elapsed} s\n${out}${err}")
if(rc MATCHES "timeout")
  message(FATAL_ERROR "the job hung: still running after ${LIMIT} s")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "the job exited 0 although rank 1 ${FAULT}")
endif()
if(FAULT STREQUAL "silent")
  if(NOT "${out}${err}" MATCHES "timed out after [0-9.]+ s in fault scenario ring \\(ring step 0\\) waiting for rank 1")
    message(FATAL_ERROR "the waiting rank did not name the operation, step and peer")
  endif()
endif()
