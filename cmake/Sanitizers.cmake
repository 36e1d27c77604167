# Sanitizer builds: -DDTU_SANITIZE=ON (ASan+UBSan) or -DDTU_TSAN=ON. They are exclusive.
if(DTU_SANITIZE AND DTU_TSAN)
  message(FATAL_ERROR "DTU_SANITIZE and DTU_TSAN cannot be combined")
endif()
if(DTU_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
if(DTU_TSAN)
  # g++ warns (-Wtsan) in every file that includes Asio: TSan does not model the
  # std::atomic_thread_fence of Asio's fenced blocks. Asio hands work between threads under
  # mutexes TSan does see, and a fence it missed could only add a false report, never hide a race.
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer -Wno-tsan)
  add_link_options(-fsanitize=thread)
endif()
