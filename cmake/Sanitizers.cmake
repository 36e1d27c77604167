# Sanitizer builds: -DDTU_SANITIZE=ON (ASan+UBSan) or -DDTU_TSAN=ON. They are exclusive.
if(DTU_SANITIZE AND DTU_TSAN)
  message(FATAL_ERROR "DTU_SANITIZE and DTU_TSAN cannot be combined")
endif()
if(DTU_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
if(DTU_TSAN)
  # Asio's atomic_thread_fence trips g++'s -Wtsan ("not supported with -fsanitize=thread").
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer -Wno-error=tsan)
  add_link_options(-fsanitize=thread)
endif()
