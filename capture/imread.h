// imread.h: cv::imread that cannot throw (imread.cpp; see imread.go).
#ifdef __cplusplus
extern "C" {
#endif

// gnl_imread returns a new cv::Mat*, empty when the file cannot be
// decoded; reason (size n) then holds OpenCV's exception message, if any.
void* gnl_imread(const char* path, int flags, char* reason, int n);

#ifdef __cplusplus
}
#endif
