# Runs the multigpu test binary's killed-rank scenario under mpirun (one rank per GPU) and checks
# that the surviving ranks neither hang nor exit 0, and that they say which operation, ring step
# and peers they waited for and how to get NCCL's own diagnostics. mpirun is told not to end the
# job when the killed rank exits, so the survivors' own diagnosis is what stops the job.
# Inputs: MPIEXEC, MPIFLAGS (;-list), NP, EXE, LIMIT (seconds).
set(ENV{LONGATTN_MULTIGPU_FAULT} kill)
set(ENV{LONGATTN_COMM_TIMEOUT} 10)
string(TIMESTAMP t0 "%s")
execute_process(COMMAND ${MPIEXEC} ${MPIFLAGS} --mca orte_abort_on_non_zero_status 0
                        -x LONGATTN_MULTIGPU_FAULT -x LONGATTN_COMM_TIMEOUT -np ${NP} ${EXE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT ${LIMIT})
string(TIMESTAMP t1 "%s")
math(EXPR elapsed "${t1} - ${t0}")
message("killed rank, ${NP} ranks: exit '${rc}' after ${elapsed} s\n${out}${err}")
if("${out}${err}" MATCHES "multigpu tests SKIPPED")
  message("skipped: fewer GPUs than ranks")
  return()
endif()
if(rc MATCHES "timeout")
  message(FATAL_ERROR "the job hung: still running after ${LIMIT} s")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "the job exited 0 although rank 1 was killed")
endif()
if(NOT "${out}${err}" MATCHES "communication error: [^\n]*fault scenario ring \\(ring step [0-9]+\\) waiting for NCCL")
  message(FATAL_ERROR "no surviving rank named the operation, ring step and peers it waited for")
endif()
if(NOT "${out}${err}" MATCHES "NCCL_DEBUG=WARN")
  message(FATAL_ERROR "the diagnosis does not say how to get NCCL's own diagnostics")
endif()
